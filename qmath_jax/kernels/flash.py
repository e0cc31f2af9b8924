"""`flash_attention`: one entry point over the TPU, GPU and reference implementations.

The Pallas kernels are wrapped in a `custom_vjp` (a `pallas_call` has no
autodiff rule); the forward saves the output and the base-2 log-sum-exp, and
the backward recomputes probabilities tile by tile. The wrapper pads the length
to a multiple of the block sizes and slices the result back.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp

from qmath_jax.kernels import blocks
from qmath_jax.kernels import gpu
from qmath_jax.kernels import reference
from qmath_jax.kernels import tpu

BACKENDS = ("auto", "tpu", "gpu", "reference")

# GPU: the best of the tilings benchmarks/attention.py --sweep tried on an H200
# (7B heads, length 4096, bf16); TPU: untuned.
DEFAULT_BLOCK_SIZES = {
    "gpu": blocks.BlockSizes(block_q=128, block_k=64, block_q_dkv=64, block_k_dkv=64,
                             block_q_dq=64, block_k_dq=64),
    "tpu": blocks.BlockSizes(block_q=512, block_k=512, block_q_dkv=512, block_k_dkv=512,
                             block_q_dq=512, block_k_dq=512),
}

# Smallest block a short sequence is cut to: Triton's dot needs 16 rows; Mosaic tiles
# segment ids and residuals with the sequence along 128 lanes.
MIN_BLOCK = {"gpu": 16, "tpu": 128}


@dataclasses.dataclass(frozen=True)
class _KernelConfig:
  """Static settings of one kernel call (hashable: it is a `nondiff_argnum`)."""
  backend: str
  causal: bool
  sm_scale: float
  block_sizes: blocks.BlockSizes
  interpret: bool | object  # or a `pltpu.InterpretParams` (TPU backend)
  launch: gpu.LaunchSettings = gpu.LaunchSettings()


def resolve_backend(backend, interpret=False):
  """Concrete backend for `backend`: 'auto' follows `jax.default_backend()`.

  On CPU 'auto' means the reference, or the GPU kernel in interpret mode when
  `interpret` is set.
  """
  if backend not in BACKENDS:
    raise ValueError(f"kernels: backend must be one of {BACKENDS}, got {backend!r}")
  if backend != "auto":
    return backend
  platform = jax.default_backend()
  if platform == "tpu":
    return "tpu"
  if platform in ("gpu", "cuda", "rocm"):
    return "gpu"
  return "gpu" if interpret else "reference"


def _check_inputs(q, k, v, segment_ids):
  if q.ndim != 4:
    raise ValueError(f"flash_attention: q must be [batch, length, heads, head_dim], got {q.shape}")
  for name, x in (("k", k), ("v", v)):
    if x.ndim != 4 or x.shape[:2] != q.shape[:2] or x.shape[3] != q.shape[3]:
      raise ValueError(
          f"flash_attention: {name} must be [batch, length, kv_heads, head_dim] matching q "
          f"{q.shape} in batch, length and head_dim; got {x.shape}")
  if k.shape != v.shape:
    raise ValueError(f"flash_attention: k {k.shape} and v {v.shape} differ in shape")
  if q.shape[2] % k.shape[2]:
    raise ValueError(
        f"flash_attention: q heads ({q.shape[2]}) must be a multiple of kv_heads ({k.shape[2]})")
  if not (q.dtype == k.dtype == v.dtype):
    raise ValueError(f"flash_attention: q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
  if segment_ids is not None:
    if segment_ids.shape != q.shape[:2]:
      raise ValueError(
          f"flash_attention: segment_ids must be [batch, length] = {q.shape[:2]}, "
          f"got {segment_ids.shape}")
    if not jnp.issubdtype(segment_ids.dtype, jnp.integer):
      raise ValueError(f"flash_attention: segment_ids must be integer, got {segment_ids.dtype}")


def flash_attention(q, k, v, *, segment_ids=None, causal=True, sm_scale=None, backend="auto",
                    interpret=False, block_sizes=None, gpu_launch=None):
  """Fused softmax attention with grouped key/value heads and packed segments.

  Args:
    q: `[batch, length, heads, head_dim]`, bf16 or fp32.
    k: `[batch, length, kv_heads, head_dim]`; heads must be a multiple of kv_heads.
    v: `[batch, length, kv_heads, head_dim]`.
    segment_ids: int `[batch, length]`; a token attends only to tokens with its id.
      Padding may use its own id (e.g. 0); its rows come out finite. The id
      `blocks.PAD_SEGMENT_ID` (int32 min) is reserved for the wrapper's own padding.
    causal: mask keys after the query position.
    sm_scale: score scale, a Python number; defaults to `head_dim ** -0.5` (pass 1.0 if q
      is pre-scaled).
    backend: 'tpu', 'gpu', 'reference' or 'auto' (see `resolve_backend`).
    interpret: run the Pallas kernel in interpret mode (CPU); for the TPU backend also a
      `pltpu.InterpretParams` (e.g. race detection over several cores).
    block_sizes: `blocks.BlockSizes`, else the backend's default.
    gpu_launch: `gpu.LaunchSettings` for the GPU kernel: Triton warps and stages, and
      `dq_atomic` (dq added by atomics inside the dk/dv pass: fewer products, not bitwise
      reproducible).

  Returns:
    `[batch, length, heads, head_dim]` in q's dtype.
  """
  _check_inputs(q, k, v, segment_ids)
  backend = resolve_backend(backend, interpret)
  if sm_scale is None:
    sm_scale = q.shape[-1] ** -0.5
  if segment_ids is not None:
    segment_ids = segment_ids.astype(jnp.int32)
  if backend == "reference":
    return reference.reference_attention(q, k, v, segment_ids=segment_ids, causal=causal,
                                         sm_scale=sm_scale)
  if block_sizes is None:
    block_sizes = DEFAULT_BLOCK_SIZES[backend]
  length = q.shape[1]
  # Blocks no longer than the (rounded-up) sequence, so short inputs pad little.
  block_sizes = _fit_blocks(block_sizes, length, MIN_BLOCK[backend])
  padded = blocks.padded_length(length, block_sizes)
  if padded != length:
    pad = [(0, 0), (0, padded - length), (0, 0), (0, 0)]
    q, k, v = (jnp.pad(x, pad) for x in (q, k, v))
    if segment_ids is not None or not causal:
      # Padded keys must be masked; under causal alone they follow every real query.
      if segment_ids is None:
        segment_ids = jnp.zeros((q.shape[0], length), jnp.int32)
      segment_ids = jnp.pad(segment_ids, [(0, 0), (0, padded - length)],
                            constant_values=blocks.PAD_SEGMENT_ID)
  config = _KernelConfig(backend=backend, causal=causal, sm_scale=float(sm_scale),
                         block_sizes=block_sizes, interpret=interpret,
                         launch=gpu_launch or gpu.LaunchSettings())
  out = _attention(q, k, v, segment_ids, config)
  return out[:, :length]


def _fit_blocks(block_sizes, length, min_block):
  """Caps every block at the length rounded up to a power of two (at least min_block)."""
  cap = max(min_block, 1 << (max(length, 1) - 1).bit_length())
  return blocks.BlockSizes(**{f.name: min(getattr(block_sizes, f.name), cap)
                              for f in dataclasses.fields(block_sizes)})


def _kernel_module(config):
  return {"gpu": gpu, "tpu": tpu}[config.backend]


def _launch_kwargs(config):
  kwargs = dict(causal=config.causal, sm_scale=config.sm_scale,
                block_sizes=config.block_sizes, interpret=config.interpret)
  if config.backend == "gpu":
    kwargs.update(launch=config.launch)
  return kwargs


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _attention(q, k, v, segment_ids, config):
  out, _ = _kernel_module(config).forward(q, k, v, segment_ids, **_launch_kwargs(config))
  return out


def _attention_fwd(q, k, v, segment_ids, config):
  out, lse = _kernel_module(config).forward(q, k, v, segment_ids, **_launch_kwargs(config))
  return out, (q, k, v, segment_ids, out, lse)


def _attention_bwd(config, residuals, d_out):
  q, k, v, segment_ids, out, lse = residuals
  dq, dk, dv = _kernel_module(config).backward(q, k, v, segment_ids, out, lse, d_out,
                                               **_launch_kwargs(config))
  return dq, dk, dv, None


_attention.defvjp(_attention_fwd, _attention_bwd)
