"""Model FLOPs per token, peak FLOP/s per device kind, and the MFU estimate.

Counting (training = forward + backward = 3x forward; a matmul of an [m, k] by [k, n] is 2mkn):
  * dense: 6 * N_matmul per token, N_matmul = the weights used in matmuls (q, k, v, o, gate, up,
    down in every layer, plus the LM head; the embedding lookup is free);
  * attention: causal QK^T and AV over `seq_len` keys, half of them masked:
    6 * layers * heads * head_dim * seq_len per token (= 12 L H Q T / 2).
Packed rows are counted at their full row length (what the XLA attention computes).
"""

from qmath_jax.model.config import ModelConfig

# bf16 dense peak TFLOP/s per chip, by a substring of `jax.Device.device_kind` (first match).
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v6e", 918.0),
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),
    ("TPU v5", 459.0),
    ("TPU v4", 275.0),
    ("H200", 989.0),
    ("H100", 989.0),
    ("A100", 312.0),
)


def peak_tflops(device_kind: str) -> float | None:
  """bf16 dense peak TFLOP/s for a device kind, or None when unknown (e.g. CPU)."""
  for key, value in PEAK_BF16_TFLOPS:
    if key.lower() in device_kind.lower():
      return value
  return None


def matmul_params(cfg: ModelConfig, include_lm_head: bool = True) -> int:
  """Weights that take part in matmuls per token (tied embeddings count once, as the head)."""
  e, h, k, d, m = (cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                   cfg.intermediate_size)
  per_layer = e * h * d + 2 * e * k * d + h * d * e + 3 * e * m
  head = cfg.vocab_size * e if include_lm_head else 0
  return cfg.num_layers * per_layer + head


def train_flops_per_token(cfg: ModelConfig, seq_len: int, include_lm_head: bool = True) -> float:
  """Forward + backward FLOPs per token of a row of `seq_len` tokens (see module docstring).

  `include_lm_head=False` for the reward model, whose LM-head logits are never computed.
  """
  dense = 6.0 * matmul_params(cfg, include_lm_head)
  attention = 6.0 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return dense + attention


def throughput(step_time_s: float, tokens_per_step: float, flops_per_token: float,
               num_devices: int, device_kind: str) -> dict[str, float]:
  """Per-step speed figures.

  Args:
    step_time_s: wall seconds of one step.
    tokens_per_step: tokens processed per step (batch x length, padding included).
    flops_per_token: `train_flops_per_token(...)`.
    num_devices: devices the step ran on.
    device_kind: `jax.devices()[0].device_kind`.

  Returns:
    tokens_per_s, tokens_per_s_per_device, tflops_per_device, and mfu (model FLOP/s over
    the bf16 dense peak; absent when the device's peak is unknown).
  """
  if step_time_s <= 0:
    raise ValueError(f"step_time_s must be positive, got {step_time_s}")
  tokens_per_s = tokens_per_step / step_time_s
  tflops = tokens_per_s * flops_per_token / num_devices / 1e12
  out = {"tokens_per_s": tokens_per_s, "tokens_per_s_per_device": tokens_per_s / num_devices,
         "tflops_per_device": tflops}
  peak = peak_tflops(device_kind)
  if peak:
    out["mfu"] = tflops / peak
  return out
