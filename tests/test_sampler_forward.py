"""The sampler against the model's full forward (no cache): greedy tokens, log-probs, groups, mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from qmath_jax.kernels import decode_gpu
from qmath_jax.model import Transformer, get_config
from qmath_jax.parallel.mesh import make_mesh
from qmath_jax.sampling import sampler as sampler_lib
from qmath_jax.sampling.sampler import Sampler
from qmath_jax.sampling.testing import TableTokenizer, default_table, perturbed_params
from qmath_jax.sampling.weights import TensorLayout

PROMPTS = ["x=1+2", "abc def gh(", "7*8"]  # 5, 11, 3 tokens: left padding up to 16
NEW = 12


@pytest.fixture(scope="module")
def model():
  cfg = get_config("tiny")
  params = perturbed_params(cfg)
  tokenizer = TableTokenizer(default_table(cfg.vocab_size), eos_ids=())
  return cfg, params, tokenizer


@pytest.fixture(scope="module")
def full_logits(model):
  """fp32 log_softmax of the full forward for token rows right-padded to 32: `[rows, 32, vocab]`."""
  cfg, params, _ = model
  forward = jax.jit(lambda t, s: jax.nn.log_softmax(
      Transformer(cfg).apply({"params": params}, t, segment_ids=s), axis=-1))

  def run(sequences):
    tokens = np.zeros((len(sequences), 32), np.int32)
    segments = np.zeros((len(sequences), 32), np.int32)
    for i, seq in enumerate(sequences):
      tokens[i, :len(seq)] = seq
      segments[i, :len(seq)] = 1
    return np.asarray(forward(jnp.asarray(tokens), jnp.asarray(segments)))

  return run


def _greedy_reference(full_logits, prompt_ids, steps):
  """Step-by-step argmax of the full forward, every prompt at once."""
  sequences = [list(p) for p in prompt_ids]
  for _ in range(steps):
    logprobs = full_logits(sequences)
    for i, seq in enumerate(sequences):
      seq.append(int(np.argmax(logprobs[i, len(seq) - 1])))
  return [seq[len(p):] for seq, p in zip(sequences, prompt_ids)]


def _teacher_forced_logprobs(full_logits, prompt_ids, completions):
  """log_softmax of the full forward at each generated token of each completion."""
  sequences = [list(p) + list(c) for p, c in zip(prompt_ids, completions)]
  logprobs = full_logits(sequences)
  return [logprobs[i, len(p) - 1 + np.arange(len(c)), c]
          for i, (p, c) in enumerate(zip(prompt_ids, completions))]


def test_greedy_equals_argmax_of_full_forward(model, full_logits):
  cfg, params, tokenizer = model
  out = Sampler(cfg, params, tokenizer).generate(PROMPTS, max_new_tokens=NEW)
  prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
  expected = _greedy_reference(full_logits, prompt_ids, NEW)
  got = [c[0].token_ids for c in out]
  assert got == expected
  assert all(c[0].finish_reason == "length" and len(c[0].logprobs) == NEW for c in out)
  assert out[1][0].text == tokenizer.decode(expected[1])
  for lp, ref in zip([c[0].logprobs for c in out],
                     _teacher_forced_logprobs(full_logits, prompt_ids, got)):
    np.testing.assert_allclose(lp, ref, rtol=0, atol=1e-5)


def test_sampled_logprobs_equal_full_forward(model, full_logits):
  """Each of a group's rows (sharing the group's prompt cache) sees exactly its own history."""
  cfg, params, tokenizer = model
  n = 4
  out = Sampler(cfg, params, tokenizer).generate(
      PROMPTS, n=n, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
  rows = [(p, c) for p, group in zip(prompt_ids, out) for c in group]
  assert len(rows) == len(PROMPTS) * n
  refs = _teacher_forced_logprobs(full_logits, [p for p, _ in rows],
                                  [c.token_ids for _, c in rows])
  for (_, c), ref in zip(rows, refs):
    assert len(c.token_ids) == NEW and np.asarray(c.logprobs).dtype == np.float64
    np.testing.assert_allclose(c.logprobs, ref, rtol=0, atol=1e-5)
  assert len({tuple(c.token_ids) for c in out[1]}) > 1  # a group's samples differ


def test_growing_own_cache_matches_full_forward_and_one_capacity(model, full_logits):
  """A cache of 4 slots grows to 8, then 16 (the bucket of 12): same tokens, same log-probs."""
  cfg, params, tokenizer = model
  growing = Sampler(cfg, params, tokenizer, initial_cache_len=4)
  greedy = growing.generate(PROMPTS, max_new_tokens=NEW)
  assert (growing.last_stats["cache_grows"], growing.last_stats["cache_len"]) == (2, 16)
  prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
  got = [c[0].token_ids for c in greedy]
  assert got == _greedy_reference(full_logits, prompt_ids, NEW)
  for lp, ref in zip([c[0].logprobs for c in greedy],
                     _teacher_forced_logprobs(full_logits, prompt_ids, got)):
    np.testing.assert_allclose(lp, ref, rtol=0, atol=1e-5)
  knobs = dict(n=4, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  sampled = growing.generate(PROMPTS, **knobs)
  whole = Sampler(cfg, params, tokenizer).generate(PROMPTS, **knobs)
  assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in whole]
  for group, whole_group in zip(sampled, whole):
    for c, w in zip(group, whole_group):
      np.testing.assert_allclose(c.logprobs, w.logprobs, rtol=0, atol=1e-5)


def test_group_of_greedy_samples_matches_single(model):
  cfg, params, tokenizer = model
  sampler = Sampler(cfg, params, tokenizer)
  single = sampler.generate(PROMPTS, n=1, max_new_tokens=NEW)
  grouped = sampler.generate(PROMPTS, n=4, max_new_tokens=NEW)
  for one, group in zip(single, grouped):
    assert [c.token_ids for c in group] == [one[0].token_ids] * 4


def test_same_seed_same_samples_independent_of_batch(model):
  cfg, params, tokenizer = model
  sampler = Sampler(cfg, params, tokenizer)
  knobs = dict(n=4, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW)
  first = sampler.generate(PROMPTS, seed=3, **knobs)
  again = sampler.generate(PROMPTS, seed=3, **knobs)
  other = sampler.generate(PROMPTS, seed=4, **knobs)
  ids = lambda out: [[c.token_ids for c in group] for group in out]
  assert ids(first) == ids(again)
  assert ids(first) != ids(other)
  # Prompt 0 drawn inside another batch (another row after sorting by length): same draws.
  reordered = sampler.generate([PROMPTS[0], "ab", "zz z"], seed=3, **knobs)
  assert ids(reordered)[0] == ids(first)[0]
  # At most 8 rows per batch: the 3 prompts x 4 samples run as two batches, same draws.
  split = Sampler(cfg, params, tokenizer, max_rows=8)
  assert ids(split.generate(PROMPTS, seed=3, **knobs)) == ids(first)
  assert split.last_stats["batches"] == 2


def test_mesh_sharded_equals_single_device(model):
  cfg, params, tokenizer = model
  mesh = make_mesh((-1, 1, 1))
  assert mesh.shape["data"] == 8  # tests/conftest.py simulates 8 CPU devices
  plain = Sampler(cfg, params, tokenizer).generate(
      PROMPTS, n=4, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  before = dict(sampler_lib.TRACES)
  sharded_sampler = Sampler(cfg, params, tokenizer, mesh=mesh)
  sharded = sharded_sampler.generate(
      PROMPTS, n=4, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  assert sampler_lib.TRACES["prefill"] == before["prefill"] + 1  # a sharded executable
  for a, b in zip(plain, sharded):
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b):
      np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=1e-5)


def test_mesh_takes_params_committed_to_one_device(model):
  """Params committed to one device (as `hf.load_hf` returns them) are copied onto the mesh."""
  cfg, params, tokenizer = model
  knobs = dict(n=2, temperature=1.3, top_k=50, max_new_tokens=NEW, seed=3)
  plain = Sampler(cfg, params, tokenizer).generate(PROMPTS, **knobs)
  one_device = jax.device_put(params, jax.devices()[1])
  mesh = make_mesh((4, 1, 2))
  sampler = Sampler(cfg, one_device, tokenizer, mesh=mesh)
  assert sampler._weights["embedding"].sharding.device_set == set(mesh.devices.flat)  # pylint: disable=protected-access
  assert [[c.token_ids for c in g] for g in sampler.generate(PROMPTS, **knobs)] == [
      [c.token_ids for c in g] for g in plain]


@pytest.mark.parametrize("shape,layout", [
    ((2, 2, 2), TensorLayout(attn=2, mlp=2, vocab=2)),
    # 2 kv heads do not split 4 ways: attention stays whole, the MLP and vocabulary split.
    ((2, 1, 4), TensorLayout(attn=1, mlp=4, vocab=4)),
])
def test_tensor_parallel_equals_single_device(model, shape, layout):
  cfg, params, tokenizer = model
  knobs = dict(n=2, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  plain = Sampler(cfg, params, tokenizer).generate(PROMPTS, **knobs)
  sampler = Sampler(cfg, params, tokenizer, mesh=make_mesh(shape))
  assert sampler.layout == layout
  layer = sampler._weights["layers"][0]  # pylint: disable=protected-access
  shard = lambda x: x.addressable_shards[0].data.shape
  tensor = shape[2]
  assert shard(layer["w_down"]) == (cfg.intermediate_size // tensor, cfg.hidden_size)
  assert shard(layer["w_gate_up"])[1:] == (1, 2 * cfg.intermediate_size // tensor)
  assert shard(layer["wo"])[0] == cfg.num_heads * cfg.head_dim // layout.attn
  assert shard(sampler._weights["lm_head"]) == (cfg.hidden_size, cfg.vocab_size // tensor)  # pylint: disable=protected-access
  sharded = sampler.generate(PROMPTS, **knobs)
  for a, b in zip(plain, sharded):
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    for x, y in zip(a, b):
      np.testing.assert_allclose(x.logprobs, y.logprobs, rtol=0, atol=1e-5)


def test_tensor_layout_of_the_presets():
  mesh = lambda tensor: make_mesh((-1, 1, tensor))
  # Qwen2.5-Math-1.5B: 2 kv heads, MLP 8960, vocabulary 151936.
  cfg = get_config("qwen2.5-math-1.5b")
  assert TensorLayout.for_mesh(cfg, mesh(2)) == TensorLayout(2, 2, 2)
  assert TensorLayout.for_mesh(cfg, mesh(8)) == TensorLayout(1, 8, 8)
  assert TensorLayout.for_mesh(get_config("qwen2.5-math-7b"), mesh(4)) == TensorLayout(4, 4, 4)
  assert TensorLayout.for_mesh(cfg, None) == TensorLayout(1, 1, 1)


def test_update_params_reuses_compiled_code(model):
  cfg, params, tokenizer = model
  sampler = Sampler(cfg, params, tokenizer)
  first = sampler.generate(PROMPTS, max_new_tokens=NEW)
  before = dict(sampler_lib.TRACES)
  sampler.update_params(jax.tree.map(lambda x: -x, params))
  second = sampler.generate(PROMPTS, max_new_tokens=NEW)
  assert dict(sampler_lib.TRACES) == before
  assert [c[0].token_ids for c in first] != [c[0].token_ids for c in second]


def test_bfloat16_compute_stays_close_to_fp32(model, full_logits):
  cfg, params, tokenizer = model
  out = Sampler(cfg.replace(dtype="bfloat16"), params, tokenizer).generate(
      PROMPTS, n=2, temperature=1.0, max_new_tokens=6, seed=1)
  prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
  rows = [(p, c) for p, group in zip(prompt_ids, out) for c in group]
  refs = _teacher_forced_logprobs(full_logits, [p for p, _ in rows],
                                  [c.token_ids for _, c in rows])
  for (_, c), ref in zip(rows, refs):
    np.testing.assert_allclose(c.logprobs, ref, rtol=0, atol=0.1)


@pytest.mark.parametrize("shape", [None, (2, 2, 2), (2, 1, 4)])
def test_pallas_attention_sampler_equals_xla(model, full_logits, monkeypatch, shape):
  """attention="pallas": the flash kernel prefills and the decode kernels (interpret mode)
  attend, under shard_map on a mesh (kv heads split on (2, 2, 2), whole on (2, 1, 4))."""
  cfg, params, tokenizer = model
  calls = []
  kernel = decode_gpu.decode_attention
  monkeypatch.setattr(decode_gpu, "decode_attention",
                      lambda *a, **k: calls.append(a[0].shape) or kernel(*a, **k))
  mesh = make_mesh(shape) if shape else None
  sampler = Sampler(cfg.replace(attention="pallas"), params, tokenizer, mesh=mesh)
  knobs = dict(n=2, temperature=1.3, top_k=50, top_p=0.95, max_new_tokens=NEW, seed=3)
  sampled = sampler.generate(PROMPTS, **knobs)
  assert len(calls) == cfg.num_layers  # one decode step traced, every layer on the kernels
  if shape is None:
    assert calls[0] == (8, cfg.num_heads, cfg.head_dim)  # 4 groups (3 padded up) x n = 2
  whole = Sampler(cfg, params, tokenizer).generate(PROMPTS, **knobs)
  assert [[c.token_ids for c in g] for g in sampled] == [[c.token_ids for c in g] for g in whole]
  for group, whole_group in zip(sampled, whole):
    for c, w in zip(group, whole_group):
      np.testing.assert_allclose(c.logprobs, w.logprobs, rtol=0, atol=1e-5)
  if shape is None:
    greedy = sampler.generate(PROMPTS, max_new_tokens=NEW)
    prompt_ids = [tokenizer.encode(p) for p in PROMPTS]
    assert [c[0].token_ids for c in greedy] == _greedy_reference(full_logits, prompt_ids, NEW)
