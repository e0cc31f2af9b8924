"""The sampler: jitted prefill, then a `lax.while_loop` decode over a donated KV cache.

    sampler = Sampler(cfg, params, tokenizer, mesh=None)
    completions = sampler.generate(prompts, n=8, temperature=0.7, top_p=0.8,
                                   max_new_tokens=2048, stop=["```"], seed=0)
    completions[i][j]   # the j-th of n Completions of prompt i (qmath_jax.sampling.types)

How a call runs:
- Prompts are tokenized, sorted by length and cut into batches of at most `max_rows` rows
  (rows = prompts x n). Each batch is left-padded to a length bucket; groups (powers of two),
  prompt length and the most new tokens (16, 24, 32, 48, 64, ...: powers of two and their
  halfway points) are bucketed. The jitted prefill and decode are module-level functions keyed on
  (model config, mesh, sampling mode, bucket shapes), so calls of similar sizes, and every
  Sampler of the same config (a new one after each RL update, say), reuse compiled code.
  Temperature, k and p are traced values; only which filters run (greedy, top-k, top-p) is
  static, so the decode loop holds no branch.
- Prefill runs each prompt once and samples the first token of its `n` rows from the last
  prompt logits. The group's rows then decode against [prompt cache ; own cache]
  (`qmath_jax.sampling.forward`).
- Decode runs on device as a while loop that stops when every row has sampled an
  end-of-sequence id or reached `max_new_tokens`. A row whose prompt leaves fewer positions
  than that before `max_position_embeddings` ends there, finish reason "length" (as vLLM caps
  a sequence at the model length); only a prompt with no room for one token is an error,
  naming the prompt. The own cache grows with the completions: it
  starts with `initial_cache_len` slots and doubles (up to the bucket of `max_new_tokens`)
  whenever the loop fills it, so each step's attention reads at most twice the slots in use,
  and a batch whose rows all stop early never allocates or reads the cache `max_new_tokens`
  would need. Each capacity is one compiled decode loop, reused by every later call. With stop strings it returns every
  `stop_check_interval` steps: the host decodes each unfinished row's new text, marks rows whose
  text holds a stop string as done (it cuts them at the token that completed the string, also
  when the string spans tokens), and resumes the loop with the same donated cache.
- Sampling: greedy when temperature is 0, else temperature, top-k, top-p
  (`qmath_jax.sampling.filters`). Row (prompt i, sample j) draws from its own key
  `fold_in(fold_in(key(seed), i), j)` folded with the step, so a completion does not depend on
  the batch it ran in (up to floating-point differences between compiled batch shapes).
- Log-probs: fp32 `log_softmax` of the model's logits at each sampled token, i.e. under the
  temperature-1, unfiltered model distribution, whatever the sampling settings. Ids at or past
  the tokenizer's `vocab_size` (rows padding the model's vocabulary) are never sampled.
- On a mesh, rows, caches and prompts are split over the batch axes ('data', 'fsdp'), and the
  decode weights over 'tensor' (heads, MLP units, vocabulary: `weights.TensorLayout`), the KV
  caches with their heads; the weights are laid out straight into their shards. What the host
  reads (tokens, log-probs, done flags, step counts) leaves the jitted functions replicated.
- Attention follows the model config: `attention="pallas"` prefills with the flash kernel and
  decodes with the decode-attention kernels (`qmath_jax.kernels.decode`), else XLA's einsums.
- A mesh may span several processes (a TPU pod slice under `jax.distributed`): every process
  calls `generate` with the same prompts and arguments, as it runs the same program. Each builds
  the global inputs from its own identical host copy, reads the replicated outputs from its own
  devices, and so takes the same stop decisions and returns the full results; the params given
  are global arrays on the mesh (as the train state or a restored checkpoint holds them). A call
  whose prompts or arguments differ between processes is an error (one small all-gather of a
  digest per call checks it).
"""

import collections
import dataclasses
import functools
import hashlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from qmath_jax.model.config import ModelConfig
from qmath_jax.parallel import batch as parallel_batch
from qmath_jax.parallel import mesh as mesh_lib
from qmath_jax.parallel import rules as parallel_rules
from qmath_jax.sampling import filters, forward, stops, weights
from qmath_jax.sampling.types import Completion

MIN_BUCKET = 16


def bucket(size: int, minimum: int = MIN_BUCKET) -> int:
  """Smallest of minimum, 2^k and 3 * 2^(k-1) that holds `size` (at most 1.5x padding)."""
  size = max(size, minimum)
  power = 1 << (size - 1).bit_length()
  halfway = 3 * power // 4
  return halfway if halfway >= size and halfway >= minimum else power


def _floor_pow2(x: int) -> int:
  return 1 << (max(x, 1).bit_length() - 1)


TRACES = collections.Counter()  # compilations of "prefill" and "decode", for tests and logs
MAX_EOS_IDS = 8  # end-of-sequence ids are padded to this many (a fixed shape: no recompile)


@dataclasses.dataclass(frozen=True)
class Mode:
  """Static sampling switches: one compiled prefill and decode per combination."""
  stochastic: bool
  use_top_k: bool
  use_top_p: bool
  num_ids: int = 0  # > 0: only ids below it are chosen (the tokenizer's); 0: every id

  @classmethod
  def of(cls, temperature: float, top_k: int, top_p: float, num_ids: int = 0) -> "Mode":
    stochastic = temperature > 0
    return cls(stochastic, stochastic and top_k > 0, stochastic and top_p < 1.0, num_ids)


def _eos_hit(tokens, eos_ids):
  """bool `[rows]`: tokens `[rows]` that are one of eos_ids `[MAX_EOS_IDS]` (-1 = unused)."""
  return jnp.any(tokens[:, None] == eos_ids[None, :], axis=-1)


def _batch_sharded(mesh, x, *rest):
  """Constrains dimension 0 of x to the batch axes, the next ones to `rest` (no-op without a mesh)."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(
      x, NamedSharding(mesh, PartitionSpec(mesh_lib.BATCH_AXES, *rest)))


def _replicated(mesh, x):
  """Constrains x to a full copy on every device (no-op without a mesh): every process of a
  multi-process mesh can then read it from its own devices."""
  if mesh is None:
    return x
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec()))


def _heads_split(cfg: ModelConfig, mesh) -> bool:
  """Whether the attention weights, and so the KV caches, split kv heads over 'tensor'."""
  return mesh is not None and weights.TensorLayout.for_mesh(cfg, mesh).attn > 1


def _cache_sharded(cfg: ModelConfig, mesh, x):
  """Constrains a K or V cache `[batch, kv_heads, length, head_dim]`: heads as the weights."""
  return _batch_sharded(mesh, x, weights.TENSOR_AXIS if _heads_split(cfg, mesh) else None)


def _sample(mode: Mode, logits, keys, knobs):
  temperature, top_k, top_p = knobs
  return filters.sample(logits, keys, temperature, top_k, top_p, stochastic=mode.stochastic,
                        use_top_k=mode.use_top_k, use_top_p=mode.use_top_p,
                        num_ids=mode.num_ids)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "mode", "n", "capacity"))
def _start(weights_, tokens, positions, segment_ids, prompt_lens, row_ids, active, seed_key,
           knobs, eos_ids, *, cfg, mesh, mode, n, capacity):
  """Prefill, the first token of each row, an empty own cache of `capacity` slots.

  Returns:
    (decode state, first tokens `[rows]`, their log-probs `[rows]`); the tokens and log-probs
    replicated.
  """
  TRACES["prefill"] += 1
  logits, prompt_cache = forward.prefill(cfg, weights_, tokens, positions, segment_ids, mesh,
                                         _heads_split(cfg, mesh))
  prompt_cache = jax.tree.map(functools.partial(_cache_sharded, cfg, mesh), prompt_cache)
  row_keys = jax.vmap(lambda ids: jax.random.fold_in(
      jax.random.fold_in(seed_key, ids[0]), ids[1]))(row_ids)
  step_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(row_keys, 0)
  rows_logits = _batch_sharded(mesh, jnp.repeat(logits, n, axis=0))
  token, logprob = _sample(mode, rows_logits, step_keys, knobs)
  rows = token.shape[0]
  shape = (rows, cfg.num_kv_heads, capacity, cfg.head_dim)
  own_cache = [{"k": _cache_sharded(cfg, mesh, jnp.zeros(shape, cfg.compute_dtype)),
                "v": _cache_sharded(cfg, mesh, jnp.zeros(shape, cfg.compute_dtype))}
               for _ in range(cfg.num_layers)]
  state = {
      "prompt_cache": prompt_cache,
      "prompt_valid": segment_ids != 0,
      "own_cache": own_cache,
      "token": token,
      "position": jnp.repeat(prompt_lens, n),
      "num": jnp.ones((), jnp.int32),
      "done": ~active | _eos_hit(token, eos_ids),
      "row_keys": row_keys,
  }
  return state, _replicated(mesh, token), _replicated(mesh, logprob)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "capacity"))
def _grow(own_cache, *, cfg, mesh, capacity):
  """The own cache `[rows, kv_heads, slots, head_dim]` per layer, padded to `capacity` slots."""
  TRACES["grow"] += 1

  def pad(x):
    extra = capacity - x.shape[2]
    return _cache_sharded(cfg, mesh, jnp.pad(x, ((0, 0), (0, 0), (0, extra), (0, 0))))

  return jax.tree.map(pad, own_cache)


@functools.partial(jax.jit, static_argnames=("cfg", "mesh", "mode", "chunk"),
                   donate_argnames=("state",))
def _decode(weights_, state, stopped, limit, knobs, eos_ids, *, cfg, mesh, mode, chunk):
  """Up to `chunk` decode steps: fewer when every row is done, `limit` tokens exist or the own
  cache is full (token `num` is written at slot `num - 1`).

  Returns:
    (state, tokens `[rows, chunk]`, log-probs `[rows, chunk]`, steps taken, done `[rows]`);
    all but the state replicated.
  """
  TRACES["decode"] += 1
  rows = state["token"].shape[0]
  first = state["num"]
  capacity = state["own_cache"][0]["k"].shape[2]
  end = jnp.minimum(jnp.minimum(limit, first + chunk), capacity + 1)

  def cond(carry):
    return (carry["num"] < end) & ~jnp.all(carry["done"])

  def body(carry):
    logits, own_cache = forward.decode_step(
        cfg, weights_, state["prompt_cache"], state["prompt_valid"], carry["own_cache"],
        carry["token"], carry["position"], carry["num"] - 1, mesh=mesh,
        heads_split=_heads_split(cfg, mesh))
    keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(state["row_keys"], carry["num"])
    token, logprob = _sample(mode, logits, keys, knobs)
    column = carry["num"] - first
    return {
        "own_cache": own_cache,
        "token": token,
        "position": carry["position"] + 1,
        "num": carry["num"] + 1,
        "done": carry["done"] | _eos_hit(token, eos_ids),
        "tokens": jax.lax.dynamic_update_slice(carry["tokens"], token[:, None], (0, column)),
        "logprobs": jax.lax.dynamic_update_slice(carry["logprobs"], logprob[:, None],
                                                 (0, column)),
    }

  carry = {
      "own_cache": state["own_cache"],
      "token": state["token"],
      "position": state["position"],
      "num": state["num"],
      "done": state["done"] | stopped,
      "tokens": jnp.zeros((rows, chunk), jnp.int32),
      "logprobs": jnp.zeros((rows, chunk), jnp.float32),
  }
  carry = jax.lax.while_loop(cond, body, carry)
  state = {**state, **{k: carry[k] for k in ("own_cache", "token", "position", "num", "done")}}
  read = functools.partial(_replicated, mesh)
  return (state, read(carry["tokens"]), read(carry["logprobs"]), read(carry["num"] - first),
          read(carry["done"]))


@functools.lru_cache(maxsize=16)
def _prepare_sharded(cfg: ModelConfig, layout: weights.TensorLayout, mesh):
  """`weights.prepare` jitted to write each weight straight into its shards on `mesh`."""
  shardings = jax.tree.map(lambda spec: NamedSharding(mesh, spec),
                           weights.partition_specs(cfg, layout))
  return jax.jit(functools.partial(weights.prepare, cfg, layout=layout), out_shardings=shardings)


class Sampler:
  """Generates completions for prompt strings (or token ids) with a Qwen2.5 model."""

  def __init__(self, model_config: ModelConfig, params, tokenizer, mesh=None, *,
               max_rows: int = 256, stop_check_interval: int = 32,
               initial_cache_len: int = 64):
    """Prepares decode weights and compiles lazily.

    Args:
      model_config: the model's config (its `dtype` is the compute and cache dtype).
      params: `Transformer` parameters (unboxed tree); on a mesh that spans several processes,
        global arrays on its devices (e.g. a train state's params).
      tokenizer: `qmath_jax.data.tokenizer.Tokenizer`-like: encode, decode, pad_id, eos_ids.
      mesh: optional mesh; rows are split over its ('data', 'fsdp') axes, weights and KV
        heads over 'tensor'.
      max_rows: most rows (prompts x n) decoded together; larger calls run in batches.
      stop_check_interval: decode steps between host checks for stop strings.
      initial_cache_len: own-cache slots per row at the start of a batch; the cache doubles
        whenever decoding fills it.
    """
    if min(max_rows, stop_check_interval, initial_cache_len) < 1:
      raise ValueError(f"max_rows={max_rows}, stop_check_interval={stop_check_interval} and "
                       f"initial_cache_len={initial_cache_len} must be >= 1")
    weights.check_params(model_config, params)
    self.cfg = model_config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.max_rows = max_rows
    self.stop_check_interval = stop_check_interval
    self.initial_cache_len = initial_cache_len
    self.eos_ids = tuple(int(t) for t in tokenizer.eos_ids)
    if len(self.eos_ids) > MAX_EOS_IDS:
      raise ValueError(f"tokenizer has {len(self.eos_ids)} end-of-sequence ids; at most "
                       f"{MAX_EOS_IDS} are supported")
    self.pad_id = int(tokenizer.pad_id)
    # A model vocabulary padded past the tokenizer's (Qwen's 151936 rows for 151665 ids) has
    # ids that decode to nothing or raise (sentencepiece): they are never sampled.
    num_ids = int(getattr(tokenizer, "vocab_size", model_config.vocab_size))
    self._num_ids = num_ids if num_ids < model_config.vocab_size else 0
    self.last_stats: dict = {}
    self._shards = 1 if mesh is None else mesh_lib.batch_shards(mesh)
    self.layout = weights.TensorLayout.for_mesh(model_config, mesh)
    self.update_params(params)

  # -- parameters and placement -------------------------------------------------------------

  def update_params(self, params) -> None:
    """Replaces the weights (e.g. after an RL step); compiled functions are reused.

    Args:
      params: as for the constructor, e.g. the train state's params (global arrays, any
        sharding on the mesh): they are re-laid out straight into the decode shards. Arrays
        off the mesh (e.g. `hf.load_hf`'s one-device params) are first copied onto it.
    """
    weights.check_params(self.cfg, params)
    if self.mesh is None:
      self._weights = weights.prepare_jit(self.cfg, params, self.layout)
      return
    params = parallel_rules.onto_mesh(params, self.mesh)
    self._weights = _prepare_sharded(self.cfg, self.layout, self.mesh)(params)

  def _put(self, x: np.ndarray) -> jax.Array:
    """Host rows (the same on every process) on the mesh, split over the batch axes."""
    return parallel_batch.host_array_on_mesh(x, self.mesh)

  # -- public API -------------------------------------------------------------------------------

  def generate(self, prompts: Sequence[str], n: int = 1, *, temperature: float = 0.0,
               top_p: float = 1.0, top_k: int = 0, max_new_tokens: int = 256,
               stop: Sequence[str] = (), seed: int = 0) -> list[list[Completion]]:
    """Returns, per prompt, `n` completions (see the module docstring)."""
    if isinstance(prompts, str):
      raise TypeError("prompts must be a sequence of strings, not one string")
    prompt_ids = [self.tokenizer.encode(p) for p in prompts]
    return self.generate_ids(prompt_ids, n, temperature=temperature, top_p=top_p, top_k=top_k,
                             max_new_tokens=max_new_tokens, stop=stop, seed=seed)

  def generate_ids(self, prompt_ids: Sequence[Sequence[int]], n: int = 1, *,
                   temperature: float = 0.0, top_p: float = 1.0, top_k: int = 0,
                   max_new_tokens: int = 256, stop: Sequence[str] = (),
                   seed: int = 0) -> list[list[Completion]]:
    """`generate` for prompts given as token ids."""
    stop = self._check_args(prompt_ids, n, temperature, top_p, top_k, max_new_tokens, stop)
    self._check_same_call(prompt_ids, (n, float(temperature), float(top_p), int(top_k),
                                       int(max_new_tokens), stop, int(seed)))
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    per_batch = _floor_pow2(max(1, self.max_rows // n))
    results: list[list[Completion] | None] = [None] * len(prompt_ids)
    self.last_stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "rows": 0,
                       "batches": 0, "cache_grows": 0, "cache_len": 0}
    for start in range(0, len(order), per_batch):
      indices = order[start:start + per_batch]
      batch = self._generate_batch(
          [list(prompt_ids[i]) for i in indices], indices, n, temperature, top_p, top_k,
          max_new_tokens, stop, seed)
      for i, completions in zip(indices, batch):
        results[i] = completions
    return results

  def _check_args(self, prompt_ids, n, temperature, top_p, top_k, max_new_tokens, stop):
    if n < 1:
      raise ValueError(f"n={n}: need at least one sample per prompt")
    if not temperature >= 0:
      raise ValueError(f"temperature={temperature}: must be >= 0 (0 is greedy)")
    if not 0 < top_p <= 1:
      raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    if top_k < 0:
      raise ValueError(f"top_k={top_k}: must be >= 0 (0 keeps every token)")
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
    if isinstance(stop, str):
      stop = [stop]
    stop = list(stop)
    for s in stop:
      if not isinstance(s, str) or not s:
        raise ValueError(f"stop strings must be non-empty strings, got {s!r}")
    limit = self.cfg.max_position_embeddings
    for i, ids in enumerate(prompt_ids):
      if not len(ids):
        raise ValueError(f"prompt {i} is empty: a prompt needs at least one token")
      if len(ids) >= limit:
        raise ValueError(f"prompt {i} has {len(ids)} tokens: max_position_embeddings={limit} "
                         "leaves no room for a new token")
      bad = [t for t in ids if not 0 <= int(t) < self.cfg.vocab_size]
      if bad:
        raise ValueError(f"prompt {i} holds token id {bad[0]} outside the vocabulary "
                         f"[0, {self.cfg.vocab_size})")
    return stop

  def _check_same_call(self, prompt_ids, knobs: tuple) -> None:
    """Raises ValueError unless every process of a multi-process mesh got the same call."""
    if self.mesh is None or not self.mesh.is_multi_process:
      return
    digest = hashlib.sha256(repr(knobs).encode())
    digest.update(np.array([len(ids) for ids in prompt_ids], np.int64).tobytes())
    for ids in prompt_ids:
      digest.update(np.asarray(ids, np.int64).tobytes())
    digests = multihost_utils.process_allgather(np.frombuffer(digest.digest(), np.uint8))
    differ = [p for p, d in enumerate(digests) if not np.array_equal(d, digests[0])]
    if differ:
      raise ValueError(
          f"process {jax.process_index()}: processes {differ} called generate with other "
          "prompts or arguments than process 0; on a mesh that spans several processes every "
          "process must make the same call")

  def _generate_batch(self, prompts, prompt_indices, n, temperature, top_p, top_k,
                      max_new_tokens, stop, seed) -> list[list[Completion]]:
    """One batch of prompts (already validated); returns their completions in order."""
    count = len(prompts)
    groups = _floor_pow2(count)
    groups = groups if groups == count else groups * 2
    groups = -(-groups // self._shards) * self._shards
    length = bucket(max(len(p) for p in prompts))
    own_len = bucket(max_new_tokens)  # the own cache's largest capacity
    capacity = min(self.initial_cache_len, own_len)
    rows = groups * n

    tokens = np.full((groups, length), self.pad_id, np.int32)
    segment_ids = np.zeros((groups, length), np.int32)
    positions = np.zeros((groups, length), np.int32)
    prompt_lens = np.ones((groups,), np.int32)
    prompt_index = np.zeros((groups,), np.int32)
    for g in range(groups):
      ids = prompts[g] if g < count else [self.pad_id]  # filler groups: one token, never used
      tokens[g, length - len(ids):] = ids
      segment_ids[g, length - len(ids):] = 1
      positions[g, length - len(ids):] = np.arange(len(ids))
      prompt_lens[g] = len(ids)
      prompt_index[g] = prompt_indices[g] if g < count else 0
    row_ids = np.stack([np.repeat(prompt_index, n), np.tile(np.arange(n, dtype=np.int32), groups)],
                       axis=1).astype(np.int32)
    active = np.arange(rows) < count * n
    # Prompt + completion fill at most max_position_embeddings positions.
    row_max = np.minimum(max_new_tokens,
                         self.cfg.max_position_embeddings - np.repeat(prompt_lens, n))

    mode = Mode.of(temperature, top_k, top_p, self._num_ids)
    knobs = (jnp.float32(max(temperature, 1e-6)), jnp.int32(max(top_k, 1)), jnp.float32(top_p))
    eos_ids = jnp.asarray(list(self.eos_ids) + [-1] * (MAX_EOS_IDS - len(self.eos_ids)),
                          jnp.int32)
    clock = time.perf_counter()
    state, token, logprob = _start(
        self._weights, self._put(tokens), self._put(positions),
        self._put(segment_ids), self._put(prompt_lens), self._put(row_ids),
        self._put(active), jax.random.key(seed), knobs, eos_ids, cfg=self.cfg,
        mesh=self.mesh, mode=mode, n=n, capacity=capacity)
    ids = [[t] for t in np.asarray(token).tolist()]
    logprobs = [[x] for x in np.asarray(logprob, np.float32).tolist()]
    done = ~active | np.isin(np.asarray(token), self.eos_ids)
    prefill_s = time.perf_counter() - clock

    num = 1
    stopped = row_max <= num  # rows that reached their last position end like stopped ones
    checked = [0] * rows
    decode_text = self.tokenizer.decode

    def check_stops():
      for r in np.flatnonzero(~done & ~stopped):
        stopped[r] = stops.has_stop(decode_text, ids[r], stop, checked[r])
        checked[r] = len(ids[r])

    if stop:
      check_stops()
    clock = time.perf_counter()
    while num < max_new_tokens and not np.all(done | stopped):
      if num > capacity:  # the next token goes to slot num - 1 >= capacity
        capacity = min(2 * capacity, own_len)
        self.last_stats["cache_grows"] += 1
        state["own_cache"] = _grow(state["own_cache"], cfg=self.cfg, mesh=self.mesh,
                                   capacity=capacity)
      chunk = min(self.stop_check_interval, capacity) if stop else capacity
      limit = int(row_max[~done & ~stopped].min())  # the next row to reach its last position
      state, new_tokens, new_logprobs, steps, done_now = _decode(
          self._weights, state, self._put(stopped), jnp.int32(limit), knobs,
          eos_ids, cfg=self.cfg, mesh=self.mesh, mode=mode, chunk=chunk)
      steps = int(steps)
      new_tokens = np.asarray(new_tokens)[:, :steps].tolist()
      new_logprobs = np.asarray(new_logprobs, np.float32)[:, :steps].tolist()
      for r in range(rows):
        ids[r].extend(new_tokens[r])
        logprobs[r].extend(new_logprobs[r])
      done = np.asarray(done_now) | done
      num += steps
      stopped |= row_max <= num
      if stop:
        check_stops()
    decode_s = time.perf_counter() - clock
    del state

    self.last_stats["prefill_s"] += prefill_s
    self.last_stats["decode_s"] += decode_s
    self.last_stats["decode_steps"] += num - 1
    self.last_stats["rows"] += rows
    self.last_stats["batches"] += 1
    self.last_stats["cache_len"] = max(self.last_stats["cache_len"], capacity)
    out = []
    for g in range(count):
      out.append([stops.completion(decode_text, ids[r], logprobs[r], self.eos_ids, stop,
                                   int(row_max[r])) for r in range(g * n, g * n + n)])
    return out
