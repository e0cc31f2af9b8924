"""config.json of a Hugging Face Qwen2 checkpoint <-> ModelConfig (transformers 4 and 5 layouts)."""

import json
import pathlib

from qmath_jax.model.config import ModelConfig

CAUSAL_LM = "Qwen2ForCausalLM"
REWARD_MODEL = "Qwen2ForRewardModel"  # Qwen2.5-Math-RM's custom code (modeling_qwen2_rm.py)
SUPPORTED_ARCHITECTURES = (CAUSAL_LM, REWARD_MODEL)


def _raw(hf_dir: pathlib.Path) -> dict:
  path = hf_dir / "config.json"
  try:
    return json.loads(path.read_text())
  except FileNotFoundError:
    raise FileNotFoundError(f"{path}: no config.json in the checkpoint directory") from None
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON: {e}") from None


def is_reward_model(hf_dir: pathlib.Path) -> bool:
  """Whether `hf_dir/config.json` exists and names `Qwen2ForRewardModel`."""
  try:
    raw = _raw(hf_dir)
  except (FileNotFoundError, ValueError):
    return False
  return REWARD_MODEL in (raw.get("architectures") or [])


def read_config(hf_dir: pathlib.Path, dtype: str | None) -> ModelConfig:
  """Parses `hf_dir/config.json` (a causal LM's, or a reward model's backbone); raises naming
  the file and field on anything unsupported. `dtype` None: the checkpoint's own (its
  `dtype` / `torch_dtype` field, else float32)."""
  path = hf_dir / "config.json"
  raw = _raw(hf_dir)
  dtype = dtype or raw.get("dtype") or raw.get("torch_dtype") or "float32"
  archs = raw.get("architectures") or []
  if not any(a in SUPPORTED_ARCHITECTURES for a in archs) and raw.get("model_type") != "qwen2":
    raise ValueError(f"{path}: unknown architecture {archs or raw.get('model_type')!r}; "
                     f"supported: {SUPPORTED_ARCHITECTURES}")
  if REWARD_MODEL in archs:
    # The released modeling_qwen2_rm.py fixes one label; config.json may omit the field.
    labels = raw.get("num_labels", len(raw.get("id2label") or {0: None}))
    if labels != 1:
      raise ValueError(f"{path}: num_labels={labels}; a {REWARD_MODEL} scores with one label")
  if raw.get("hidden_act", "silu") != "silu":
    raise ValueError(f"{path}: hidden_act={raw['hidden_act']!r} is not supported (Qwen2's MLP is "
                     "SwiGLU: silu)")
  if raw.get("use_sliding_window"):
    raise ValueError(f"{path}: use_sliding_window=true is not supported (Qwen2.5 does not use it)")
  # transformers >= 5 writes rope_theta inside rope_parameters (top-level may be null) and reads
  # it from there first; 4.x reads only the top-level field. Two different values are ambiguous.
  rope = raw.get("rope_parameters") or {}
  top, inner = raw.get("rope_theta"), rope.get("rope_theta")
  if top is not None and inner is not None and float(top) != float(inner):
    raise ValueError(f"{path}: rope_theta={top} but rope_parameters.rope_theta={inner}; "
                     "transformers 4 and 5 would read different models")
  rope_theta = inner if inner is not None else top if top is not None else 10000.0
  for rope_spec in (rope, raw.get("rope_scaling") or {}):
    if (rope_spec.get("rope_type") or rope_spec.get("type") or "default") != "default":
      raise ValueError(f"{path}: rope scaling {rope_spec!r} is not supported")

  def field(name, default=None):
    value = raw.get(name, default)
    if value is None:
      raise ValueError(f"{path}: missing field {name!r}")
    return value

  hidden, heads = int(field("hidden_size")), int(field("num_attention_heads"))
  return ModelConfig(
      vocab_size=int(field("vocab_size")), hidden_size=hidden,
      num_layers=int(field("num_hidden_layers")), num_heads=heads,
      num_kv_heads=int(field("num_key_value_heads", heads)),
      head_dim=int(raw.get("head_dim") or hidden // heads),
      intermediate_size=int(field("intermediate_size")), rope_theta=float(rope_theta),
      rms_norm_eps=float(field("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(raw.get("tie_word_embeddings", False)),
      max_position_embeddings=int(field("max_position_embeddings", 4096)),
      dtype=dtype, param_dtype=dtype,
      bos_token_id=raw.get("bos_token_id"), eos_token_id=_first_id(raw.get("eos_token_id"), 151643))


def _first_id(value, default: int) -> int:
  """config.json may give a token id, a list of them, or null."""
  if isinstance(value, list):
    value = value[0] if value else None
  return default if value is None else int(value)


def config_dict(cfg: ModelConfig, reward_model: bool = False) -> dict:
  """The config.json that transformers' Qwen2ForCausalLM loads (4.x and 5.x), or with
  `reward_model` the one of a Qwen2ForRewardModel (one label)."""
  head = {"architectures": [REWARD_MODEL], "num_labels": 1} if reward_model else {
      "architectures": [CAUSAL_LM]}
  return {
      **head, "model_type": "qwen2",
      "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "intermediate_size": cfg.intermediate_size, "hidden_act": "silu",
      "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "max_position_embeddings": cfg.max_position_embeddings,
      "tie_word_embeddings": cfg.tie_embeddings, "use_sliding_window": False,
      "sliding_window": None, "max_window_layers": cfg.num_layers, "attention_dropout": 0.0,
      "initializer_range": 0.02, "use_cache": True, "bos_token_id": cfg.bos_token_id,
      "eos_token_id": cfg.eos_token_id, "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
  }
