"""Fused attention kernels (Pallas TPU and GPU) and their pure-jnp references: flash attention
for training and prefill, decode attention over grouped KV caches for sampling."""

from qmath_jax.kernels.blocks import BlockSizes
from qmath_jax.kernels.decode import decode_attention
from qmath_jax.kernels.flash import flash_attention
from qmath_jax.kernels.flash import resolve_backend
from qmath_jax.kernels.gpu import LaunchSettings
from qmath_jax.kernels.reference import reference_attention
from qmath_jax.kernels.sharded import sharded_flash_attention
