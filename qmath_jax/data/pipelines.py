"""grain pipelines: shuffle, tokenise, pack, batch, shard per host; checkpointable.

Four pipelines, one per kind of training data. Each returns a ``Pipeline``: ``.dataset`` is a
``grain.IterDataset`` of batches (numpy arrays), ``.bad_rows`` counts what was skipped and why.

Batch dicts (``B`` = ``PipelineConfig.batch_size``, the per-host batch; ``L`` = ``seq_len``):

  pretrain_pipeline, sft_pipeline (packed; several examples per row):
    tokens       int32 [B, L]  token ids; padding holds ``tokenizer.pad_id``
    segment_ids  int32 [B, L]  1, 2, ... per packed example in the row; 0 = padding
    positions    int32 [B, L]  position inside its example, restarting at 0 per segment
    loss_mask    int32 [B, L]  1 where tokens[b, t] is a prediction target
  The loss is unshifted here: token t is predicted from the logits at t - 1. loss_mask is 0 on
  the first token of every segment and on padding, so a masked term never crosses a segment
  boundary: loss = sum_t loss_mask[:, t] * -log p(tokens[:, t] | logits[:, t - 1]), t >= 1.
  Pretraining masks every other token in (1); SFT masks only assistant content and its
  ``<|im_end|>``, less the interpreter output blocks of TIR transcripts (``chat.encode``).

  rm_pipeline (one query's fixed-size list of responses per example; no packing):
    tokens       int32 [B, K, L]  chat-formatted [system, user, assistant] conversations
    segment_ids  int32 [B, K, L]  1 on real tokens, 0 on padding (right-padded)
    positions    int32 [B, K, L]  0 .. length - 1, 0 on padding
    lengths      int32 [B, K]     real tokens; the RM reads the hidden state at lengths - 1
    labels       int32 [B, K]     1 = the response's final answer is correct, else 0

  rl_pipeline (prompts for sampling; left-padded so every prompt ends at column P - 1):
    tokens       int32 [B, P]  ChatML prompt ending in ``<|im_start|>assistant\\n``
    segment_ids  int32 [B, P]  1 on prompt tokens, 0 on padding
    positions    int32 [B, P]  0 .. length - 1 over the prompt, 0 on padding
    lengths      int32 [B]
    prompt, answer, id  str [B]  the prompt text (for ``SamplerLike.generate``), the gold
                                 answer and the problem id

Determinism and restarts: the order depends only on the data, ``seed`` and the shard; every
epoch is reshuffled with seed + epoch. ``iter(pipeline.dataset)`` gives a grain
``DatasetIterator`` whose ``get_state()`` / ``set_state()`` (or ``save_state`` /
``restore_state`` below) resume at the same next batch mid-epoch.

Bad rows: examples longer than ``seq_len`` (SFT, RM) or ``max_prompt_length`` (RL) are
skipped and counted in ``bad_rows`` with their id (``strict=True`` raises instead); counts
cover the examples this process has read. Pretraining documents are split into chunks of at
most ``seq_len`` tokens rather than skipped.
"""

import dataclasses
import json
import re
from collections.abc import Sequence

import grain
import numpy as np

from qmath_jax.data import chat
from qmath_jax.data import gold
from qmath_jax.data import records
from qmath_jax.data import sources


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  """What every pipeline takes.

  Attributes:
    batch_size: rows per batch on this host.
    seq_len: tokens per row (L).
    seed: shuffling and bin-shuffling seed; same seed, same batches.
    shard_index, shard_count: this host's disjoint share of the examples (jax.process_index(),
      jax.process_count() in a multi-host run).
    num_epochs: passes over the data; None repeats forever.
    shuffle: shuffle examples (reshuffled each epoch).
    num_packing_bins: rows packed at once (first-fit); more bins, less padding. None: batch_size.
    strict: raise on the first bad row instead of counting it.
  """
  batch_size: int
  seq_len: int
  seed: int = 0
  shard_index: int = 0
  shard_count: int = 1
  num_epochs: int | None = 1
  shuffle: bool = True
  num_packing_bins: int | None = None
  strict: bool = False

  def __post_init__(self):
    if not 0 <= self.shard_index < self.shard_count:
      raise ValueError(f"shard_index {self.shard_index} outside [0, {self.shard_count})")
    if self.batch_size < 1 or self.seq_len < 2:
      raise ValueError(f"batch_size {self.batch_size} and seq_len {self.seq_len} too small")


@dataclasses.dataclass
class Pipeline:
  """A grain dataset of batches and the report of rows it skipped."""
  dataset: grain.IterDataset
  bad_rows: records.BadRows

  def __iter__(self):
    return iter(self.dataset)


def _examples(items: Sequence, cfg: PipelineConfig) -> grain.MapDataset:
  """Shards, shuffles (per epoch) and repeats a random-access sequence of examples."""
  ds = grain.MapDataset.source(items)
  if cfg.shard_count > 1:
    ds = ds[cfg.shard_index::cfg.shard_count]
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  if cfg.num_epochs != 1:
    ds = ds.repeat(cfg.num_epochs)
  return ds


def _kept(ds: grain.MapDataset, tokenize, cfg: PipelineConfig, bad_rows: records.BadRows,
          num_items: int) -> grain.MapDataset:
  """`ds.map(tokenize)` without the examples it rejects (returns None for).

  Raises ValueError once 2 x (this host's examples) in a row were rejected: every epoch holds
  each example once, so by then no example fits, and a repeating pipeline would otherwise
  spin through epochs forever (counted in this process, as the pipelines run in-process).
  """
  limit = 2 * len(range(cfg.shard_index, num_items, max(cfg.shard_count, 1)))
  rejected_in_a_row = [0]

  def keep(example):
    out = tokenize(example)
    rejected_in_a_row[0] = 0 if out is not None else rejected_in_a_row[0] + 1
    if limit and rejected_in_a_row[0] >= limit:
      raise ValueError(f"no example fits: the last {limit} examples in a row were rejected "
                       f"({bad_rows.summary()})")
    return out

  return ds.map(keep).filter(lambda x: x is not None)


def _pack_and_batch(ds: grain.IterDataset, cfg: PipelineConfig, pad_id: int) -> grain.IterDataset:
  """Packs {tokens, loss_mask} sequences into [L] rows, then batches them to [B, L]."""
  length = {"tokens": cfg.seq_len, "loss_mask": cfg.seq_len}
  packed = grain.experimental.FirstFitPackIterDataset(
      ds, length_struct=length, num_packing_bins=cfg.num_packing_bins or cfg.batch_size,
      seed=cfg.seed, shuffle_bins=True, padding_struct={"tokens": pad_id, "loss_mask": 0})

  def rename(row):
    segment_ids = row["tokens_segment_ids"].astype(np.int32)
    positions = row["tokens_positions"].astype(np.int32)
    loss_mask = row["loss_mask"].astype(np.int32) * (positions > 0) * (segment_ids > 0)
    return {"tokens": row["tokens"].astype(np.int32), "segment_ids": segment_ids,
            "positions": positions, "loss_mask": loss_mask.astype(np.int32)}

  return packed.map(rename).batch(cfg.batch_size, drop_remainder=True)


class _ChunkDocument(grain.experimental.FlatMapTransform):
  """Splits a token sequence into chunks of at most seq_len tokens, each its own segment."""

  def __init__(self, seq_len: int, max_chunks: int):
    self.seq_len = seq_len
    self.max_fan_out = max_chunks

  def flat_map(self, element):
    tokens = element["tokens"]
    return [{"tokens": tokens[i:i + self.seq_len],
             "loss_mask": np.ones(len(tokens[i:i + self.seq_len]), np.int32)}
            for i in range(0, len(tokens), self.seq_len)][:self.max_fan_out]


def pretrain_pipeline(texts: Sequence[str], tokenizer, cfg: PipelineConfig, *,
                      max_chunks_per_document: int = 64) -> Pipeline:
  """Plain text documents -> packed [B, L] rows; each document ends with ``<|endoftext|>``.

  Documents longer than ``max_chunks_per_document * seq_len`` tokens keep only that many
  chunks; each cut is counted in ``bad_rows`` ("document over max chunks").
  """
  bad_rows = records.BadRows(strict=cfg.strict)
  end = tokenizer.token_to_id(chat.ENDOFTEXT)
  limit = max_chunks_per_document * cfg.seq_len

  def tokenize(index_and_text):
    index, text = index_and_text
    tokens = np.asarray(tokenizer.encode(text) + [end], np.int32)
    if len(tokens) > limit:
      bad_rows.add("document over max chunks", f"document {index}",
                   f"{len(tokens)} tokens > {limit}; kept the first {limit}")
    return {"tokens": tokens}

  ds = _examples(list(enumerate(texts)), cfg).map(tokenize).to_iter_dataset()
  ds = grain.experimental.FlatMapIterDataset(
      ds, _ChunkDocument(cfg.seq_len, max_chunks_per_document))
  return Pipeline(_pack_and_batch(ds, cfg, tokenizer.pad_id), bad_rows)


def sft_pipeline(conversations: Sequence[dict], tokenizer, cfg: PipelineConfig, *,
                 mask_tool_outputs: bool = True) -> Pipeline:
  """Conversations ``{"id": str, "messages": [...]}`` -> packed rows, assistant-only loss.

  With ``mask_tool_outputs`` (default) the interpreter output blocks spliced into TIR replies
  are not prediction targets (``chat.tool_output_spans``); off, the whole reply is.
  """
  bad_rows = records.BadRows(strict=cfg.strict)

  def tokenize(example):
    tokens, mask = chat.encode(tokenizer, example["messages"],
                               mask_tool_outputs=mask_tool_outputs)
    if len(tokens) > cfg.seq_len:
      bad_rows.add("longer than seq_len", f"example {example.get('id')!r}",
                   f"{len(tokens)} tokens > {cfg.seq_len}")
      return None
    return {"tokens": np.asarray(tokens, np.int32), "loss_mask": np.asarray(mask, np.int32)}

  ds = _kept(_examples(conversations, cfg), tokenize, cfg, bad_rows, len(conversations))
  return Pipeline(_pack_and_batch(ds.to_iter_dataset(), cfg, tokenizer.pad_id), bad_rows)


def rm_pipeline(lists: Sequence[dict], tokenizer, cfg: PipelineConfig,
                list_size: int = 6) -> Pipeline:
  """RM lists ``{"id", "messages" (prompt turns), "responses": [K str], "labels": [K]}``.

  Each response becomes the conversation messages + an assistant turn, right-padded to L.
  Lists with another size or a response over L tokens are bad rows (skipped whole).
  """
  bad_rows = records.BadRows(strict=cfg.strict)
  length = cfg.seq_len

  def tokenize(example):
    where = f"example {example.get('id')!r}"
    if len(example["responses"]) != list_size or len(example["labels"]) != list_size:
      bad_rows.add("wrong list size", where,
                   f"{len(example['responses'])} responses, {len(example['labels'])} labels, "
                   f"expected {list_size}")
      return None
    tokens = np.full((list_size, length), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((list_size, length), np.int32)
    positions = np.zeros((list_size, length), np.int32)
    lengths = np.zeros((list_size,), np.int32)
    for k, response in enumerate(example["responses"]):
      messages = list(example["messages"]) + [{"role": "assistant", "content": response}]
      ids, _ = chat.encode(tokenizer, messages)
      if len(ids) > length:
        bad_rows.add("longer than seq_len", where, f"response {k}: {len(ids)} tokens > {length}")
        return None
      tokens[k, :len(ids)] = ids
      segment_ids[k, :len(ids)] = 1
      positions[k, :len(ids)] = np.arange(len(ids))
      lengths[k] = len(ids)
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
            "lengths": lengths, "labels": np.asarray(example["labels"], np.int32)}

  ds = _kept(_examples(lists, cfg), tokenize, cfg, bad_rows, len(lists))
  return Pipeline(ds.to_iter_dataset().batch(cfg.batch_size, drop_remainder=True), bad_rows)


def rl_pipeline(problems: Sequence[sources.Problem], tokenizer, cfg: PipelineConfig, *,
                max_prompt_length: int | None = None, system: str = chat.COT_SYSTEM) -> Pipeline:
  """Problems -> left-padded ChatML prompts [B, P] with their gold answers.

  ``P`` is ``max_prompt_length`` (default ``cfg.seq_len``); longer prompts are bad rows.
  """
  bad_rows = records.BadRows(strict=cfg.strict)
  length = max_prompt_length or cfg.seq_len

  def tokenize(problem):
    prompt = chat.render(prompt_messages(problem, system), add_generation_prompt=True)
    ids = tokenizer.encode(prompt)
    if len(ids) > length:
      bad_rows.add("prompt longer than max_prompt_length", f"problem {problem.id!r}",
                   f"{len(ids)} tokens > {length}")
      return None
    tokens = np.full((length,), tokenizer.pad_id, np.int32)
    segment_ids = np.zeros((length,), np.int32)
    positions = np.zeros((length,), np.int32)
    tokens[length - len(ids):] = ids
    segment_ids[length - len(ids):] = 1
    positions[length - len(ids):] = np.arange(len(ids))
    return {"tokens": tokens, "segment_ids": segment_ids, "positions": positions,
            "lengths": np.int32(len(ids)), "prompt": np.asarray(prompt),
            "answer": np.asarray(problem.answer), "id": np.asarray(problem.id)}

  ds = _kept(_examples(problems, cfg), tokenize, cfg, bad_rows, len(problems))
  return Pipeline(ds.to_iter_dataset().batch(cfg.batch_size, drop_remainder=True), bad_rows)


# ---------------------------------------------------------------------------------------------
# Turning problems and files into pipeline inputs.

_CALCULATOR = re.compile(r"<<[^<>]*>>")


def cot_response(problem: sources.Problem) -> str:
  """The problem's reference solution as a CoT response ending in ``\\boxed{answer}``.

  GSM8K solutions lose their ``<<a*b=c>>`` calculator notes and their ``#### answer`` line;
  solutions without a ``\\boxed{}`` get a closing "The answer is $\\boxed{...}$." line.
  """
  text = problem.solution.strip()
  if "####" in text:
    text = _CALCULATOR.sub("", text.rsplit("####", 1)[0]).strip()
  if gold.last_boxed(text) is None:
    text = f"{text}\nThe answer is $\\boxed{{{problem.answer}}}$.".strip()
  return text


def prompt_messages(problem: sources.Problem, system: str = chat.COT_SYSTEM) -> list[dict]:
  """[system, user] turns asking the problem; multiple-choice options follow the question."""
  question = problem.question
  if problem.choices:
    question = question + "\n" + "\n".join(problem.choices)
  return [{"role": "system", "content": system}, {"role": "user", "content": question}]


def sft_conversations(problems: Sequence[sources.Problem],
                      system: str = chat.COT_SYSTEM) -> list[dict]:
  """Problems with solutions -> ``{"id", "messages"}`` SFT examples (CoT template)."""
  return [{"id": p.id, "messages": prompt_messages(p, system) +
           [{"role": "assistant", "content": cot_response(p)}]}
          for p in problems if p.solution]


def planted_rm_lists(problems: Sequence[sources.Problem], *, list_size: int = 6,
                     seed: int = 0) -> list[dict]:
  """RM lists from problems with reference solutions (tests and the demo).

  Each list holds k correct responses (the reference CoT response; k drawn from 1..list_size-1
  with `seed`) and list_size - k wrong ones: the same response whose final boxed answer is
  replaced by another integer, so telling them apart means checking the last step. Rows are
  ``{"id", "messages" (prompt turns), "responses": [list_size], "labels": [list_size]}``,
  responses shuffled, as `rm_pipeline` reads them.
  """
  if list_size < 2:
    raise ValueError(f"list_size={list_size}: a list needs a correct and a wrong response")
  rng = np.random.default_rng(seed)
  lists = []
  for problem in problems:
    right = cot_response(problem)
    boxed = f"\\boxed{{{problem.answer}}}"
    if not problem.solution or boxed not in right:
      continue
    k = int(rng.integers(1, list_size))
    wrong = []
    for _ in range(list_size - k):
      offset = int(rng.integers(1, 10)) * (1 if rng.random() < 0.5 else -1)
      wrong.append(right.replace(boxed, f"\\boxed{{{_shifted(problem.answer, offset)}}}"))
    responses = [right] * k + wrong
    labels = [1] * k + [0] * (list_size - k)
    order = rng.permutation(list_size)
    lists.append({"id": problem.id, "messages": prompt_messages(problem),
                  "responses": [responses[i] for i in order],
                  "labels": [labels[i] for i in order]})
  return lists


def _shifted(answer: str, offset: int) -> str:
  """An integer answer moved by `offset`; other answers get the offset appended."""
  try:
    return str(int(answer) + offset)
  except ValueError:
    return f"{answer}{abs(offset)}"


def load_conversations(path, bad_rows: records.BadRows) -> list[dict]:
  """SFT jsonl: one ``{"id"?, "messages": [{"role", "content"}, ...]}`` per line.

  A row needs at least one assistant turn, known roles and string contents; other rows are
  bad rows (with file and line).
  """
  examples = []
  for line_no, row in records.read_jsonl(path, bad_rows):
    where = f"{path}:{line_no}"
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
      bad_rows.add("missing field", where, "field 'messages'")
      continue
    problem = _message_problem(messages)
    if problem:
      bad_rows.add("malformed messages", where, problem)
      continue
    examples.append({"id": str(row.get("id", f"{path}:{line_no}")), "messages": messages})
  return examples


def load_rm_lists(path, bad_rows: records.BadRows, list_size: int = 6) -> list[dict]:
  """RM jsonl: ``{"id"?, "messages", "responses": [K str], "labels": [K 0/1]}`` per line."""
  examples = []
  for line_no, row in records.read_jsonl(path, bad_rows):
    where = f"{path}:{line_no}"
    missing = [k for k in ("messages", "responses", "labels") if k not in row]
    if missing:
      bad_rows.add("missing field", where, f"field {missing[0]!r}")
      continue
    problem = _message_problem(row["messages"], need_assistant=False)
    if problem:
      bad_rows.add("malformed messages", where, problem)
      continue
    if (not isinstance(row["responses"], list)
        or not all(isinstance(r, str) for r in row["responses"])):
      bad_rows.add("malformed field", where, "field 'responses' is not a list of text")
      continue
    if not isinstance(row["labels"], list):
      bad_rows.add("malformed field", where, "field 'labels' is not a list")
      continue
    if len(row["responses"]) != list_size or len(row["labels"]) != list_size:
      bad_rows.add("wrong list size", where, f"expected {list_size} responses and labels")
      continue
    if any(label not in (0, 1) for label in row["labels"]):
      bad_rows.add("malformed field", where, "labels must be 0 or 1")
      continue
    examples.append({"id": str(row.get("id", f"{path}:{line_no}")),
                     "messages": row["messages"], "responses": list(row["responses"]),
                     "labels": list(row["labels"])})
  return examples


def _message_problem(messages, need_assistant: bool = True) -> str | None:
  """Why a message list is unusable, or None."""
  if not isinstance(messages, list):
    return "messages is not a list"
  for i, m in enumerate(messages):
    if not isinstance(m, dict) or m.get("role") not in chat.ROLES:
      return f"message {i} has no known role"
    if not isinstance(m.get("content"), str):
      return f"message {i} content is not a string"
  if need_assistant and not any(m["role"] == "assistant" for m in messages):
    return "no assistant turn"
  return None


# ---------------------------------------------------------------------------------------------
# Iterator state on disk (the train loop may also hand the iterator to grain.checkpoint).

def save_state(iterator: grain.DatasetIterator, path) -> None:
  """Writes ``iterator.get_state()`` as JSON via a temp name and a rename."""
  records.write_atomic(path, json.dumps(iterator.get_state()))


def restore_state(iterator: grain.DatasetIterator, path) -> None:
  """Sets a fresh iterator of the same pipeline to the state saved at ``path``."""
  with open(path, encoding="utf-8") as f:
    iterator.set_state(json.load(f))
