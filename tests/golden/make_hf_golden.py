"""Makes the Hugging Face golden checkpoints and logits that tests/test_model_hf.py compares to.

Needs torch and transformers (`pip install torch==2.13.0 transformers`). Writes, per case,
`tests/golden/hf/<case>/` (config.json + safetensors, as transformers saves them) and
`<case>/golden.npz` (tokens, fp32 logits). Run from the repository root:

    python tests/golden/make_hf_golden.py
"""

import pathlib
import shutil

import numpy as np
import torch
import transformers

OUT = pathlib.Path(__file__).parent / "hf"

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


def main():
  print(f"torch {torch.__version__}, transformers {transformers.__version__}")
  for seed, (name, spec) in enumerate(CASES.items()):
    make_case(name, spec, seed)


if __name__ == "__main__":
  main()
