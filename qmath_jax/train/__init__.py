"""Training: TrainState and its sharded init (state), the one jitted step (step), the loss
registry (losses), AdamW and schedules (optimizer), the reward model (reward_model), FLOP
accounting (flops), and the loop, checkpoints and metrics writers built on them."""
