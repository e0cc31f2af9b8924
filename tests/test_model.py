"""The decoder: presets, packing, remat, dtypes, and the KV-cache path against the full forward."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.model import Transformer, get_config, init_cache, init_params, param_logical_axes
from qmath_jax.model import presets


def _rel_err(a, b):
  return float(jnp.max(jnp.abs(a - b)) / jnp.max(jnp.abs(b)))


@pytest.fixture(scope="module")
def tiny():
  cfg = get_config("tiny")
  params = init_params(cfg, jax.random.key(0))
  # Non-trivial norms and biases so a wrong term cannot hide behind ones and zeros.
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  params = jax.tree.unflatten(tree, [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])
  return cfg, params


def _tokens(shape, seed=0, vocab=256):
  return jax.random.randint(jax.random.key(seed), shape, 0, vocab, jnp.int32)


# SPEC's model shapes: layers, hidden, q / kv heads, head dim, intermediate, vocab, tied.
SPEC_SHAPES = {
    "qwen2.5-math-1.5b": (28, 1536, 12, 2, 128, 8960, 151936, True),
    "qwen2.5-math-7b": (28, 3584, 28, 4, 128, 18944, 152064, False),
    "qwen2.5-math-72b": (80, 8192, 64, 8, 128, 29568, 152064, False),
}


@pytest.mark.parametrize("name", sorted(SPEC_SHAPES))
def test_presets_equal_spec_shapes(name):
  cfg = get_config(name)
  assert (cfg.num_layers, cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
          cfg.intermediate_size, cfg.vocab_size, cfg.tie_embeddings) == SPEC_SHAPES[name]
  assert (cfg.rms_norm_eps, cfg.rope_theta, cfg.max_position_embeddings) == (1e-6, 10000.0, 4096)


def test_presets_match_released_shapes():
  # Published sizes: 1.54B, 7.62B, 72.7B parameters.
  assert abs(get_config("qwen2.5-math-1.5b").num_params / 1.54e9 - 1) < 0.01
  assert abs(get_config("qwen2.5-math-7b").num_params / 7.62e9 - 1) < 0.01
  assert abs(get_config("qwen2.5-math-72b").num_params / 72.7e9 - 1) < 0.01
  assert {"tiny", "demo", "qwen2.5-math-1.5b"} <= set(presets.names())
  with pytest.raises(KeyError, match="unknown model preset 'huge'"):
    get_config("huge")
  with pytest.raises(ValueError, match="num_heads=5 is not a multiple of num_kv_heads=2"):
    get_config("tiny", num_heads=5)


def test_param_count_and_logical_names(tiny):
  cfg, params = tiny
  assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params
  axes = param_logical_axes(cfg)
  assert tuple(axes["layers"]["attn"]["k_proj"]["kernel"]) == ("layers", "embed", "kv_heads", "head_dim")
  assert tuple(axes["lm_head"]) == ("embed", "vocab")
  assert all(len(tuple(s)) == x.ndim for s, x in zip(
      jax.tree.leaves(axes, is_leaf=lambda s: isinstance(s, jax.sharding.PartitionSpec)),
      jax.tree.leaves(params)))


def test_logits_are_fp32_under_bf16(tiny):
  cfg, params = tiny
  cfg16 = cfg.replace(dtype="bfloat16")
  tokens = _tokens((2, 10))
  logits16 = Transformer(cfg16).apply({"params": params}, tokens)
  logits32 = Transformer(cfg).apply({"params": params}, tokens)
  assert logits16.dtype == jnp.float32
  assert _rel_err(logits16, logits32) < 5e-2


def test_packed_segments_do_not_see_each_other(tiny):
  cfg, params = tiny
  model = Transformer(cfg)
  a, b = _tokens((1, 7), 1), _tokens((1, 5), 2)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 4), jnp.int32)], axis=1)
  segments = jnp.array([[1] * 7 + [2] * 5 + [0] * 4])
  logits = model.apply({"params": params}, packed, segment_ids=segments)
  alone_a = model.apply({"params": params}, a)
  alone_b = model.apply({"params": params}, b)
  assert _rel_err(logits[:, :7], alone_a) < 1e-5
  assert _rel_err(logits[:, 7:12], alone_b) < 1e-5
  # Changing segment 1 leaves segment 2 untouched.
  other = packed.at[:, :7].set(_tokens((1, 7), 3))
  assert jnp.array_equal(model.apply({"params": params}, other, segment_ids=segments)[:, 7:12],
                         logits[:, 7:12])


@pytest.mark.parametrize("policy", ["full", "dots_saveable"])
def test_remat_keeps_values_and_gradients(tiny, policy):
  cfg, params = tiny
  tokens = _tokens((2, 8))

  def loss(p, c):
    return jnp.mean(jax.nn.logsumexp(Transformer(c).apply({"params": p}, tokens), axis=-1))

  g_ref = jax.grad(loss)(params, cfg)
  g_remat = jax.grad(loss)(params, cfg.replace(remat_policy=policy))
  for a, b in zip(jax.tree.leaves(g_ref), jax.tree.leaves(g_remat)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def _decode_all(cfg, params, prompt, prompt_segments, prompt_positions, continuation, next_pos,
                seg_id, cache_len=32):
  """Prefill `prompt`, then feed `continuation` one token at a time; returns all decode logits."""
  model = Transformer(cfg)
  cache = init_cache(cfg, prompt.shape[0], cache_len)
  prefill_logits, cache = model.apply({"params": params}, prompt, prompt_positions, prompt_segments,
                                      cache=cache)
  step = jax.jit(lambda p, t, pos, seg, c: model.apply({"params": p}, t, pos, seg, cache=c))
  out = []
  for i in range(continuation.shape[1]):
    logits, cache = step(params, continuation[:, i:i + 1], next_pos + i, seg_id, cache)
    out.append(logits[:, 0])
  return prefill_logits, jnp.stack(out, axis=1), cache


def test_decode_equals_full_forward(tiny):
  cfg, params = tiny
  tokens = _tokens((2, 14), 4)
  full = Transformer(cfg).apply({"params": params}, tokens)
  ones = jnp.ones((2, 6), jnp.int32)
  prefill, decoded, cache = _decode_all(
      cfg, params, tokens[:, :6], ones, jnp.broadcast_to(jnp.arange(6), (2, 6)), tokens[:, 6:],
      jnp.full((2, 1), 6), jnp.ones((2, 1), jnp.int32))
  assert _rel_err(prefill, full[:, :6]) <= 1e-5
  assert _rel_err(decoded, full[:, 6:]) <= 1e-5
  assert int(cache["index"]) == 14


def test_decode_after_packed_and_padded_prefill(tiny):
  """Row 0 holds two packed prompts and decodes the second; row 1 is left-padded."""
  cfg, params = tiny
  first, second, cont = _tokens((1, 5), 5), _tokens((1, 4), 6), _tokens((1, 5), 7)
  left = _tokens((1, 6), 8)
  prompt = jnp.concatenate([jnp.concatenate([first, second], 1),
                            jnp.concatenate([jnp.zeros((1, 3), jnp.int32), left], 1)])
  segments = jnp.array([[1] * 5 + [2] * 4, [0] * 3 + [1] * 6])
  positions = jnp.array([list(range(5)) + list(range(4)), [0] * 3 + list(range(6))])
  cont2 = _tokens((1, 5), 9)
  continuation = jnp.concatenate([cont, cont2])
  _, decoded, _ = _decode_all(cfg, params, prompt, segments, positions, continuation,
                              jnp.array([[4], [6]]), jnp.array([[2], [1]]))
  model = Transformer(cfg)
  ref0 = model.apply({"params": params}, jnp.concatenate([second, cont], 1))[:, 4:]
  ref1 = model.apply({"params": params}, jnp.concatenate([left, cont2], 1))[:, 6:]
  assert _rel_err(decoded[:1], ref0) <= 1e-5
  assert _rel_err(decoded[1:], ref1) <= 1e-5


def test_pallas_attention_equals_xla(tiny):
  """The model with the Pallas kernel (interpreted on CPU) equals the XLA path, packed rows too."""
  cfg, params = tiny
  tokens = _tokens((2, 24), 10)
  segments = jnp.array([[1] * 10 + [2] * 14, [1] * 20 + [0] * 4])
  xla = Transformer(cfg).apply({"params": params}, tokens, segment_ids=segments)
  pallas = Transformer(cfg.replace(attention="pallas")).apply({"params": params}, tokens,
                                                             segment_ids=segments)
  real = segments != 0
  assert _rel_err(pallas[real], xla[real]) <= 1e-5


def test_pallas_attention_under_a_mesh_equals_xla(tiny):
  """Under jax.set_mesh the kernel runs per shard (shard_map); gradients agree with XLA."""
  import flax.linen as nn
  from qmath_jax.parallel import mesh as mesh_lib, rules
  cfg, params = tiny
  tokens = _tokens((4, 16), 11)

  def loss(p, c):
    return jnp.mean(jax.nn.logsumexp(Transformer(c).apply({"params": p}, tokens), axis=-1))

  ref_loss, ref_grads = jax.value_and_grad(loss)(params, cfg)
  mesh = mesh_lib.make_mesh((2, 2, 2))
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules.LOGICAL_AXIS_RULES):
    got_loss, got_grads = jax.jit(jax.value_and_grad(loss), static_argnums=1)(
        params, cfg.replace(attention="pallas"))
  np.testing.assert_allclose(got_loss, ref_loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(got_grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_decode_without_positions_continues_from_the_cache(tiny):
  """With a cache and no `positions`, each token's position counts the earlier tokens of its
  segment in the cache (not a restart at 0 in every call, which rotates keys wrongly)."""
  cfg, params = tiny
  model = Transformer(cfg)
  first, second, cont = _tokens((1, 5), 5), _tokens((1, 4), 6), _tokens((1, 3), 7)
  prompt = jnp.concatenate([first, second], 1)
  cache = init_cache(cfg, 1, 16)
  _, cache = model.apply({"params": params}, prompt, segment_ids=jnp.array([[1] * 5 + [2] * 4]),
                         cache=cache)
  decoded = []
  for i in range(cont.shape[1]):
    logits, cache = model.apply({"params": params}, cont[:, i:i + 1],
                                segment_ids=jnp.array([[2]]), cache=cache)
    decoded.append(logits[:, 0])
  ref = model.apply({"params": params}, jnp.concatenate([second, cont], 1))[:, 4:]
  assert _rel_err(jnp.stack(decoded, axis=1), ref) <= 1e-5
