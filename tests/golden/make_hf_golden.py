"""Makes the Hugging Face golden checkpoints and outputs that tests/test_model_hf.py and
tests/test_hf_reward_model.py compare to.

Needs torch and transformers (`pip install torch==2.13.0 transformers`). Writes, per case,
`tests/golden/hf/<case>/` (config.json + safetensors, as transformers saves them) and
`<case>/golden.npz` (tokens, fp32 logits); and the reward model `tests/golden/hf_rm/<case>/`
(a `Qwen2ForRewardModel` built as Qwen2.5-Math-RM-72B's modeling_qwen2_rm.py builds it) with
`golden.npz` (right-padded tokens, lengths, fp32 scores at each row's last real token).
Run from the repository root (optionally naming the cases to remake):

    python tests/golden/make_hf_golden.py [gqa_untied_rm ...]
"""

import pathlib
import shutil
import sys

import numpy as np
import torch
import transformers

OUT = pathlib.Path(__file__).parent / "hf"
RM_OUT = pathlib.Path(__file__).parent / "hf_rm"

CASES = {
    # Grouped KV heads (4 / 2), untied embeddings, one safetensors file.
    "gqa_untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
                       rope_theta=10000.0, shard="5GB"),
    # 6 / 2 heads, tied embeddings, another RoPE base, sharded checkpoint with an index.
    "gqa_tied_sharded": dict(num_attention_heads=6, num_key_value_heads=2,
                             tie_word_embeddings=True, rope_theta=1000000.0, shard="40KB"),
}


def make_case(name: str, spec: dict, seed: int) -> None:
  torch.manual_seed(seed)
  spec = dict(spec)
  shard = spec.pop("shard")
  heads = spec["num_attention_heads"]
  config = transformers.Qwen2Config(
      vocab_size=128, hidden_size=16 * heads, intermediate_size=80, num_hidden_layers=2,
      head_dim=16, max_position_embeddings=64, rms_norm_eps=1e-6, use_sliding_window=False,
      **spec)
  model = transformers.Qwen2ForCausalLM(config).eval().to(torch.float32)
  with torch.no_grad():  # non-zero biases and norm weights so every term is checked
    for pname, param in model.named_parameters():
      if pname.endswith("bias"):
        param.copy_(0.5 * torch.randn_like(param))
      elif "norm" in pname:
        param.copy_(1.0 + 0.3 * torch.randn_like(param))
  tokens = torch.randint(0, config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(seed))
  with torch.no_grad():
    logits = model(input_ids=tokens).logits.to(torch.float32).numpy()
  case_dir = OUT / name
  shutil.rmtree(case_dir, ignore_errors=True)
  model.save_pretrained(case_dir, max_shard_size=shard, safe_serialization=True)
  np.savez(case_dir / "golden.npz", tokens=tokens.numpy().astype(np.int32), logits=logits)
  print(f"{name}: {sorted(p.name for p in case_dir.iterdir())}")


class Qwen2ForRewardModel(transformers.Qwen2PreTrainedModel):
  """The released RM's module tree (Qwen2.5-Math-RM-72B, modeling_qwen2_rm.py): a Qwen2Model
  `model` and `score = Sequential(Linear(H, H), ReLU(), Linear(H, 1))`, no lm_head."""

  def __init__(self, config):
    super().__init__(config)
    self.model = transformers.Qwen2Model(config)
    self.score = torch.nn.Sequential(
        torch.nn.Linear(config.hidden_size, config.hidden_size), torch.nn.ReLU(),
        torch.nn.Linear(config.hidden_size, 1))
    self.post_init()

  def forward(self, input_ids, attention_mask):
    """fp32 `[batch]`: the head's output at each right-padded row's last real token."""
    hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    logits = self.score(hidden)[..., 0]
    last = attention_mask.sum(-1) - 1
    return logits[torch.arange(input_ids.shape[0]), last]


RM_LENGTHS = (24, 17, 9, 1)  # one row each, right-padded to the longest
RM_PAD_ID = 0


def make_rm_case(name: str, seed: int) -> None:
  """Grouped KV heads (4 / 2), untied embeddings (as the 72B), random biases and norms."""
  torch.manual_seed(seed)
  config = transformers.Qwen2Config(
      vocab_size=128, hidden_size=64, intermediate_size=80, num_hidden_layers=2, head_dim=16,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False,
      rope_theta=10000.0, max_position_embeddings=64, rms_norm_eps=1e-6,
      use_sliding_window=False, num_labels=1, pad_token_id=RM_PAD_ID)
  config.auto_map = {"AutoModel": "modeling_qwen2_rm.Qwen2ForRewardModel"}
  model = Qwen2ForRewardModel(config).eval().to(torch.float32)
  with torch.no_grad():
    for pname, param in model.named_parameters():
      if pname.endswith("bias"):
        param.copy_(0.5 * torch.randn_like(param))
      elif "norm" in pname:
        param.copy_(1.0 + 0.3 * torch.randn_like(param))
      elif pname.startswith("score."):
        param.copy_(0.2 * torch.randn_like(param))
  gen = torch.Generator().manual_seed(seed)
  tokens = torch.full((len(RM_LENGTHS), max(RM_LENGTHS)), RM_PAD_ID, dtype=torch.long)
  mask = torch.zeros_like(tokens)
  for row, length in enumerate(RM_LENGTHS):
    tokens[row, :length] = torch.randint(1, config.vocab_size, (length,), generator=gen)
    mask[row, :length] = 1
  with torch.no_grad():
    scores = model(tokens, mask).to(torch.float32).numpy()
  case_dir = RM_OUT / name
  shutil.rmtree(case_dir, ignore_errors=True)
  model.save_pretrained(case_dir, safe_serialization=True)
  np.savez(case_dir / "golden.npz", tokens=tokens.numpy().astype(np.int32),
           lengths=np.asarray(RM_LENGTHS, np.int32), scores=scores)
  print(f"{name}: {sorted(p.name for p in case_dir.iterdir())}, scores {scores}")


RM_CASES = ("gqa_untied_rm",)


def main(names=()):
  """Makes the named cases (default: all)."""
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")
  for seed, (name, spec) in enumerate(CASES.items()):
    if not names or name in names:
      make_case(name, spec, seed)
  for seed, name in enumerate(RM_CASES, start=len(CASES)):
    if not names or name in names:
      make_rm_case(name, seed)


if __name__ == "__main__":
  main(sys.argv[1:])
