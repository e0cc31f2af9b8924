"""The shipped round configs hold SPEC's numbers, and no field that nothing reads."""

import pytest
from conftest import load_config

REPORT_BENCHMARKS = ("gsm8k", "math", "minerva_math", "gaokao2023en", "olympiadbench",
                     "college_math", "mmlu_stem", "gaokao2024_mix", "cmath", "cn_middle_school",
                     "aime24", "amc23")


@pytest.mark.parametrize("model, samples, lr", [("qwen2.5-math-7b", 4096, 1e-5),
                                                ("qwen2.5-math-72b", 2048, 5e-6)])
def test_rl_numbers_follow_spec(model, samples, lr):
  # SPEC §3.3: G = 32; 4096 (7B) / 2048 (72B) samples per episode; global batch 512;
  # lr 1e-5 (7B) / 5e-6 (72B); beta 1e-3; alpha 0.5; eps 0.2 (not reported, the usual).
  c = load_config("rl.py", f"model={model}")
  assert c.rl.group_size == 32
  assert c.rl.problems_per_episode * c.rl.group_size == samples
  assert c.rl.minibatch_rows == 512
  assert (c.optim.lr, c.optim.end_lr, c.optim.decay) == (lr, lr, "constant")
  assert (c.rl.kl_beta, c.rl.alpha, c.rl.clip_eps) == (1e-3, 0.5, 0.2)
  assert c.rl.max_new_tokens == 2048 and c.rl.seq_len == 4096
  assert (c.rl.scale_advantages_by_std, c.rl.normalisation) == (True, "sequence")


def test_rl_queries_are_an_input_not_synthetic_problems():
  # SPEC §3.3: RL queries are the RM set's queries the SFT model gets 2 to 5 of 8 right
  # (`sample.py:task=rl` -> queries.jsonl); a default of synthetic arithmetic would train the
  # real model on toy problems (or, with num_examples 0, on none).
  assert tuple(load_config("rl.py").data.sources) == ()
  assert tuple(load_config("demo.py").rl.data.sources) == ("synthetic",)


def test_rm_and_sample_numbers_follow_spec():
  # SPEC §3.2: 6 responses per query, listwise loss over them.
  assert load_config("rm.py").data.list_size == 6
  for task, n in (("sft", 8), ("rm", 6), ("rl", 8)):
    c = load_config("sample.py", f"task={task}")
    # SPEC "Inference": temperature 0.7, top_p 0.8, 2048 new tokens.
    assert (c.sample.temperature, c.sample.top_p, c.sample.max_new_tokens) == (0.7, 0.8, 2048)
    assert c.sample.n == n  # rejection sampling: not reported (8); RM 6; RL queries 8
    assert c.rm_data.list_size == 6
    assert (c.rl_queries.min_correct, c.rl_queries.max_correct) == (2, 5)  # SPEC §3.3
    assert c.sandbox.timeout == 5.0


def test_eval_numbers_follow_spec():
  # SPEC "Inference and evaluation": greedy is temperature 0; maj@N / RM@N sample N = 8 at
  # temperature 0.7, top_p 0.8; 2048 new tokens; 5 s per program; the report's benchmarks.
  greedy = load_config("eval.py", "mode=greedy")
  assert (greedy.eval.n, greedy.eval.temperature) == (1, 0.0)
  maj = load_config("eval.py", "mode=maj8,prompt=tir")
  assert (maj.eval.n, maj.eval.temperature, maj.eval.top_p) == (8, 0.7, 0.8)
  for c in (greedy, maj):
    assert c.eval.max_new_tokens == 2048 and c.sandbox.timeout == 5.0
    assert tuple(c.eval.datasets) == REPORT_BENCHMARKS
  assert maj.eval.prompt_type == "tir"


def test_no_field_that_nothing_reads():
  # Only the sft stage reads data.mask_tool_outputs (main._pipeline).
  assert load_config("sft.py").data.mask_tool_outputs is True
  assert "mask_tool_outputs" not in load_config("pretrain.py").data
  assert "mask_tool_outputs" not in load_config("rm.py").data
  demo = load_config("demo.py")
  assert "mask_tool_outputs" in demo.sft.data
  assert "mask_tool_outputs" not in demo.pretrain.data and "mask_tool_outputs" not in demo.rm.data
  # The sampling stages need init.* (main._check_sampling_inputs) and take the model's shapes
  # from it, so a preset (and the eval and sample configs' `model=` argument) chose nothing.
  for c in (load_config("eval.py"), load_config("sample.py"), load_config("rl.py"), demo.rl):
    assert "preset" not in c.model
  for name in ("eval.py", "sample.py"):
    with pytest.raises(ValueError, match="model=qwen2.5-math-72b"):
      load_config(name, "model=qwen2.5-math-72b")
  # eval samples with eval.seed; a top-level seed would be ignored.
  assert "seed" not in load_config("eval.py") and load_config("eval.py").eval.seed == 0
  # The GRPO loss has no z-loss term.
  assert "z_loss" not in load_config("rl.py").optim
  assert "z_loss" not in load_config("rm.py").optim  # nor the RM loss
