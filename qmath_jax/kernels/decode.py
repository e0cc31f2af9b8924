"""`decode_attention`: one new query token per row over a shared prompt cache and its own cache.

A group of `n` rows (samples of one prompt) shares the prompt's keys and values; each row
also has its own cache of the tokens it generated. Layouts (the sampler's, kv heads before
length so that a (row, kv head) block is contiguous):

    q:          [rows, heads, head_dim], rows = groups * n; query head h reads kv head h // g
    prompt k/v: [groups, kv_heads, prompt_len, head_dim]; rows of group i: i * n ... i * n + n - 1
    own k/v:    [rows, kv_heads, own_slots, head_dim]

Backends: "tpu" (`decode_tpu`: one Mosaic kernel over both caches), "gpu" (`decode_gpu`: Triton
kernels for the prompt and the own cache, split-K over the prompt, and a combine),
"reference" (`decode_reference`: einsums, softmax in fp32), "auto" (by
`jax.default_backend()`; on CPU the reference, or the GPU kernels when `interpret`). Shapes a
kernel cannot take (see each module's `fits_kernel`) use the reference, so every shape works
on every backend.
"""

import functools

import jax
from jax.sharding import PartitionSpec as P

from qmath_jax.kernels import decode_gpu
from qmath_jax.kernels import decode_reference
from qmath_jax.kernels import decode_tpu
from qmath_jax.kernels import flash

def decode_attention(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len, *,
                     backend: str = "auto", interpret: bool = False,
                     min_programs: int = decode_gpu.MIN_PROGRAMS):
  """One query token per row over [its group's prompt cache ; its own cache].

  Args:
    q: `[rows, heads, head_dim]`, rows = groups * n; heads a multiple of kv_heads.
    prompt_k: `[groups, kv_heads, prompt_len, head_dim]`.
    prompt_v: `[groups, kv_heads, prompt_len, head_dim]`.
    prompt_valid: bool `[groups, prompt_len]`, the prompt slots a row may see.
    own_k: `[rows, kv_heads, own_slots, head_dim]`.
    own_v: `[rows, kv_heads, own_slots, head_dim]`.
    own_len: int scalar: own slots `0 .. own_len - 1` are seen (the current token's included).
    backend: "tpu", "gpu", "reference" or "auto" (`flash.resolve_backend`).
    interpret: run the Pallas kernels in interpret mode (CPU tests); for "tpu" also a
      `pltpu.InterpretParams` (e.g. race detection over several cores).
    min_programs: GPU: the prompt kernel splits the prompt until its grid has this many
      programs.

  Returns:
    `[rows, heads, head_dim]` in q's dtype; softmax over both parts in fp32.
  """
  rows, heads, head_dim = q.shape
  groups, kv_heads, prompt_len, _ = prompt_k.shape
  if heads % kv_heads or rows % groups:
    raise ValueError(f"decode_attention: q {q.shape} must have a multiple of the cache's "
                     f"kv_heads ({kv_heads}) heads and of its groups ({groups}) rows")
  if own_k.shape[:2] != (rows, kv_heads) or own_k.shape[3] != head_dim:
    raise ValueError(f"decode_attention: own_k {own_k.shape} must be [rows={rows}, "
                     f"kv_heads={kv_heads}, slots, head_dim={head_dim}]")
  if prompt_valid.shape != (groups, prompt_len):
    raise ValueError(f"decode_attention: prompt_valid {prompt_valid.shape} must be "
                     f"[groups, prompt_len] = {(groups, prompt_len)}")
  backend = flash.resolve_backend(backend, interpret)
  args = (q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len)
  if backend == "gpu" and decode_gpu.fits_kernel(head_dim, prompt_len, own_k.shape[2]):
    return decode_gpu.decode_attention(*args, interpret=interpret, min_programs=min_programs)
  if backend == "tpu" and decode_tpu.fits_kernel(own_k.shape[2]):
    return decode_tpu.decode_attention(*args, interpret=interpret)
  return decode_reference.reference_decode_attention(*args)


def sharded_decode_attention(mesh, q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len,
                             *, batch_axes=("data", "fsdp"), head_axis=None, **kwargs):
  """`decode_attention` under `jax.shard_map`: rows and groups over `batch_axes`, heads over
  `head_axis` (None: heads whole on every device). Each device's groups must hold whole
  groups of rows, as the sampler pads them to be.
  """
  batch = tuple(a for a in batch_axes if a in mesh.axis_names) or None
  heads = head_axis if head_axis in mesh.axis_names else None
  q_spec = P(batch, heads, None)
  cache_spec = P(batch, heads, None, None)
  attend = functools.partial(decode_attention, **kwargs)
  return jax.shard_map(
      attend, mesh=mesh,
      in_specs=(q_spec, cache_spec, cache_spec, P(batch, None), cache_spec, cache_spec, P()),
      out_specs=q_spec, check_vma=False,
  )(q, prompt_k, prompt_v, prompt_valid, own_k, own_v, own_len)
