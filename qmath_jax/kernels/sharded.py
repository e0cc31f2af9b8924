"""`sharded_flash_attention`: the kernel under `jax.shard_map` on the model's mesh.

Each device runs `flash_attention` on its own block: batch split over the
data-parallel axes, heads over the tensor axis. When the tensor axis is wider
than the number of key/value heads, each key/value head is repeated only as
often as needed for every device to hold the one its query heads read.
"""

import functools

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from qmath_jax.kernels import flash


def _present(mesh, names):
  return tuple(name for name in names if name in mesh.axis_names)


def sharded_flash_attention(mesh, q, k, v, *, segment_ids=None, batch_axes=("data", "fsdp"),
                            head_axis="tensor", **kwargs):
  """`flash.flash_attention` with batch over `batch_axes` and heads over `head_axis`.

  Args:
    mesh: a `jax.sharding.Mesh`; axes it lacks are left out of the specs.
    q: `[batch, length, heads, head_dim]`; batch divisible by the batch axes' size,
      heads by the head axis' size.
    k: `[batch, length, kv_heads, head_dim]`.
    v: `[batch, length, kv_heads, head_dim]`.
    segment_ids: int `[batch, length]` or None.
    batch_axes: mesh axes the batch is split over.
    head_axis: mesh axis the heads are split over.
    **kwargs: passed to `flash_attention` (causal, sm_scale, backend, interpret, ...).

  Returns:
    `[batch, length, heads, head_dim]`, sharded like q.
  """
  batch_axes = _present(mesh, batch_axes)
  head_axes = _present(mesh, (head_axis,))
  tensor = mesh.shape[head_axis] if head_axes else 1
  heads, kv_heads = q.shape[2], k.shape[2]
  if heads % tensor:
    raise ValueError(f"sharded_flash_attention: q heads ({heads}) must divide by mesh axis "
                     f"{head_axis!r} of size {tensor}")
  if kv_heads % tensor:
    if tensor % kv_heads:
      raise ValueError(f"sharded_flash_attention: kv_heads ({kv_heads}) and mesh axis "
                       f"{head_axis!r} ({tensor}) must divide one another")
    k = jnp.repeat(k, tensor // kv_heads, axis=2)
    v = jnp.repeat(v, tensor // kv_heads, axis=2)
  batch_spec = batch_axes if batch_axes else None
  head_spec = head_axes[0] if head_axes else None
  qkv_spec = P(batch_spec, None, head_spec, None)
  attend = functools.partial(flash.flash_attention, **kwargs)
  if segment_ids is None:
    fn = lambda q, k, v: attend(q, k, v)
    in_specs, args = (qkv_spec, qkv_spec, qkv_spec), (q, k, v)
  else:
    fn = lambda q, k, v, s: attend(q, k, v, segment_ids=s)
    in_specs = (qkv_spec, qkv_spec, qkv_spec, P(batch_spec, None))
    args = (q, k, v, segment_ids)
  return jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=qkv_spec,
                       check_vma=False)(*args)
