"""grain pipelines: packing layout, exact loss masks, determinism, resume, sharding, bad rows."""

import json

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest

from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import records
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib

SEQ_LEN = 256


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  return tokenizer_lib.train_byte_level_bpe(synthetic.corpus(400, seed=11), 600, path)


@pytest.fixture(scope="module")
def conversations():
  return pipelines.sft_conversations(synthetic.generate(60, seed=2))


def _cfg(**overrides):
  return pipelines.PipelineConfig(**{"batch_size": 4, "seq_len": SEQ_LEN, "seed": 0,
                                     **overrides})


def _segments(batch):
  """Yields (row, segment id, slice) for every packed segment of a [B, L] batch."""
  for row in range(batch["tokens"].shape[0]):
    ids = batch["segment_ids"][row]
    for seg in np.unique(ids[ids > 0]):
      where = np.flatnonzero(ids == seg)
      assert np.array_equal(where, np.arange(where[0], where[-1] + 1)), "segment not contiguous"
      yield row, seg, slice(where[0], where[-1] + 1)


def _equal_batches(a, b):
  return len(a) == len(b) and all(
      x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x) for x, y in zip(a, b))


def test_sft_batch_layout(tok, conversations):
  batch = next(iter(pipelines.sft_pipeline(conversations, tok, _cfg())))
  assert sorted(batch) == ["loss_mask", "positions", "segment_ids", "tokens"]
  for value in batch.values():
    assert value.shape == (4, SEQ_LEN) and value.dtype == np.int32
  padding = batch["segment_ids"] == 0
  assert np.all(batch["tokens"][padding] == tok.pad_id)
  assert np.all(batch["loss_mask"][padding] == 0) and np.all(batch["positions"][padding] == 0)
  for row, _, sl in _segments(batch):
    assert np.array_equal(batch["positions"][row, sl], np.arange(sl.stop - sl.start))
    assert batch["tokens"][row, sl][0] == tok.token_to_id(chat.IM_START)


def test_sft_loss_mask_is_exactly_the_assistant_reply(tok, conversations):
  by_text = {chat.render(c["messages"]): c for c in conversations}
  seen = 0
  for batch in pipelines.sft_pipeline(conversations, tok, _cfg(num_epochs=1)).dataset:
    for row, _, sl in _segments(batch):
      tokens, mask = batch["tokens"][row, sl], batch["loss_mask"][row, sl]
      conversation = by_text[tok.decode(tokens)]       # each segment is one whole example
      reply = conversation["messages"][-1]["content"]
      assert tok.decode(tokens[mask == 1]) == reply + chat.IM_END
      first = int(np.argmax(mask))
      assert tok.decode(tokens[:first]).endswith("<|im_start|>assistant\n")
      assert mask[first:].all() or tok.decode(tokens[first:][mask[first:] == 0]) == "\n"
      seen += 1
  assert seen >= 40  # drop_remainder may leave out the last partial batch only


def _tir_pieces(problem):
  """A two-round TIR reply to a synthetic problem as (text, 1 = model-written / 0 = spliced)."""
  code = problem.meta["tir_solution"].split("```python\n")[1].split("\n```")[0]
  answer = problem.answer
  return [(f"Let me compute it.\n```python\n{code}\n```", 1),
          (f"\n```output\n{answer}\n```\n", 0),
          (f"Check it once more.\n```python\nprint({answer} * 2 // 2)\n```", 1),
          (f"\n```output\n{answer}\n```\n", 0),
          (f"Both agree. The answer is $\\boxed{{{answer}}}$.", 1)]


@pytest.mark.parametrize("mask_tool_outputs", [True, False])
def test_sft_rows_of_tir_replies_leave_out_the_interpreter_output(tok, mask_tool_outputs):
  by_text = {}   # rendered conversation -> (messages, reply pieces)
  for problem in synthetic.generate(20, seed=7):
    reply = _tir_pieces(problem)
    messages = pipelines.prompt_messages(problem, chat.TIR_SYSTEM) + [
        {"role": "assistant", "content": "".join(text for text, _ in reply)}]
    by_text[chat.render(messages)] = (messages, reply)
  conversations = [{"id": str(i), "messages": m} for i, (m, _) in enumerate(by_text.values())]
  pipeline = pipelines.sft_pipeline(conversations, tok, _cfg(seq_len=512),
                                    mask_tool_outputs=mask_tool_outputs)
  seen = 0
  for batch in pipeline.dataset:
    for row, _, sl in _segments(batch):
      tokens, mask = batch["tokens"][row, sl], batch["loss_mask"][row, sl]
      messages, reply = by_text[tok.decode(tokens)]
      trained = tok.decode(tokens[mask == 1])
      if mask_tool_outputs:
        # This tokenizer writes "```\n" as one token. It starts at the model's closing fence,
        # so the newline the loop put before "```output" comes with it: masks go by a token's
        # first character, and the fence is the model's.
        assert len(tok.encode("```\n")) == 1
        assert trained == "".join(text + "\n" if text.endswith("```") else text
                                  for text, model_written in reply if model_written) + chat.IM_END
        first = int(np.argmax(mask))
        untrained = tok.decode(tokens[first:][mask[first:] == 0])
        assert untrained == "".join(text[1:] for text, model_written in reply
                                    if not model_written) + "\n"   # the one after <|im_end|>
      else:
        assert trained == messages[-1]["content"] + chat.IM_END
      expected = chat.encode(tok, messages, mask_tool_outputs=mask_tool_outputs)[1]
      assert np.array_equal(mask, expected)   # position 0 is <|im_start|>, 0 either way
      seen += 1
  assert pipeline.bad_rows.total == 0 and seen >= 16  # drop_remainder: the last partial batch


def test_same_seed_same_batches_other_seed_other_order(tok, conversations):
  first = list(pipelines.sft_pipeline(conversations, tok, _cfg(seed=4)).dataset)
  again = list(pipelines.sft_pipeline(conversations, tok, _cfg(seed=4)).dataset)
  other = list(pipelines.sft_pipeline(conversations, tok, _cfg(seed=5)).dataset)
  assert _equal_batches(first, again)
  assert not _equal_batches(first, other)


def test_iterator_restored_mid_epoch_yields_same_next_batches(tok, conversations, tmp_path):
  cfg = _cfg(num_epochs=2, seed=9)
  iterator = iter(pipelines.sft_pipeline(conversations, tok, cfg))
  for _ in range(3):
    next(iterator)
  pipelines.save_state(iterator, tmp_path / "state.json")
  expected = [next(iterator) for _ in range(4)]
  json.loads((tmp_path / "state.json").read_text())  # plain JSON, fits in a checkpoint
  resumed = iter(pipelines.sft_pipeline(conversations, tok, cfg))
  pipelines.restore_state(resumed, tmp_path / "state.json")
  assert _equal_batches([next(resumed) for _ in range(4)], expected)


def test_epochs_are_reshuffled(tok, conversations):
  cfg = _cfg(batch_size=1, num_epochs=2, num_packing_bins=1, seq_len=512)
  order = []
  for batch in pipelines.sft_pipeline(conversations, tok, cfg).dataset:
    for row, _, sl in _segments(batch):
      order.append(tok.decode(batch["tokens"][row, sl]))
  half = len(order) // 2
  assert sorted(order[:half]) == sorted(order[half:]) and order[:half] != order[half:]


def test_host_shards_are_disjoint_and_cover_the_data(tok, conversations):
  def texts(index):
    cfg = _cfg(shard_index=index, shard_count=2, batch_size=1, num_packing_bins=1)
    out = []
    for batch in pipelines.sft_pipeline(conversations, tok, cfg).dataset:
      out += [tok.decode(batch["tokens"][r, sl]) for r, _, sl in _segments(batch)]
    return out
  a, b = texts(0), texts(1)
  assert not set(a) & set(b)
  assert sorted(a + b) == sorted(chat.render(c["messages"]) for c in conversations)


def test_over_long_examples_are_counted_or_raise(tok, conversations):
  long = {"id": "too-long", "messages": [{"role": "user", "content": "x " * 400},
                                         {"role": "assistant", "content": "y"}]}
  data = conversations[:10] + [long]
  pipeline = pipelines.sft_pipeline(data, tok, _cfg(batch_size=1, num_packing_bins=1))
  list(pipeline.dataset)
  assert pipeline.bad_rows.counts == {"longer than seq_len": 1}
  assert "'too-long'" in pipeline.bad_rows.examples["longer than seq_len"][0]
  strict = pipelines.sft_pipeline(data, tok, _cfg(strict=True))
  with pytest.raises(records.BadRowError, match="'too-long'"):
    list(strict.dataset)


def test_nothing_fits_raises_instead_of_repeating_forever(tok):
  long = [{"id": f"long-{i}", "messages": [{"role": "user", "content": "x " * 400},
                                           {"role": "assistant", "content": "y"}]}
          for i in range(3)]
  pipeline = pipelines.sft_pipeline(long, tok, _cfg(batch_size=1, num_epochs=None))
  with pytest.raises(ValueError, match=r"(?s)no example fits.*'long-\d'"):
    next(iter(pipeline.dataset))


def test_pretrain_chunks_long_documents_and_masks_segment_starts(tok):
  docs = synthetic.corpus(30, seed=1) + [" ".join(["Mia has 12 apples."] * 200)]
  pipeline = pipelines.pretrain_pipeline(docs, tok, _cfg(batch_size=2))
  total, targets = 0, 0
  for batch in pipeline.dataset:
    for row, _, sl in _segments(batch):
      mask = batch["loss_mask"][row, sl]
      assert mask[0] == 0 and mask[1:].all()
      total += sl.stop - sl.start
      targets += mask.sum()
  assert total > SEQ_LEN * 3 and targets < total
  assert pipeline.bad_rows.total == 0


def test_rm_lists(tok):
  problems = synthetic.generate(5, seed=3)
  lists = [{"id": p.id, "messages": pipelines.prompt_messages(p),
            "responses": [f"\\boxed{{{i}}}" for i in range(6)], "labels": [1, 0, 0, 1, 0, 0]}
           for p in problems]
  lists.append({"id": "short", "messages": [], "responses": ["a"], "labels": [1]})
  pipeline = pipelines.rm_pipeline(lists, tok, _cfg(batch_size=2, shuffle=False))
  batches = list(pipeline.dataset)
  assert len(batches) == 2  # 5 good lists, drop_remainder
  batch = batches[0]
  assert batch["tokens"].shape == (2, 6, SEQ_LEN) and batch["labels"].shape == (2, 6)
  assert np.array_equal(batch["labels"][0], [1, 0, 0, 1, 0, 0])
  for k in range(6):
    n = batch["lengths"][0, k]
    assert batch["segment_ids"][0, k, :n].all() and not batch["segment_ids"][0, k, n:].any()
    assert tok.decode(batch["tokens"][0, k, :n]).endswith(f"\\boxed{{{k}}}<|im_end|>\n")
  assert pipeline.bad_rows.counts == {"wrong list size": 1}


def test_rl_prompts_are_left_padded(tok):
  problems = synthetic.generate(6, seed=4)
  pipeline = pipelines.rl_pipeline(problems, tok, _cfg(batch_size=3, shuffle=False),
                                   max_prompt_length=128)
  batch = next(iter(pipeline))
  assert batch["tokens"].shape == (3, 128)
  for b in range(3):
    n = batch["lengths"][b]
    assert np.array_equal(batch["positions"][b, 128 - n:], np.arange(n))
    assert not batch["segment_ids"][b, :128 - n].any()
    assert tok.decode(batch["tokens"][b, 128 - n:]) == str(batch["prompt"][b])
    assert str(batch["prompt"][b]).endswith("<|im_start|>assistant\n")
  assert [str(a) for a in batch["answer"]] == [p.answer for p in problems[:3]]


def test_loading_conversation_and_rm_files_counts_bad_rows(tmp_path):
  path = tmp_path / "sft.jsonl"
  path.write_text("\n".join([
      json.dumps({"id": "a", "messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "r"}]}),
      json.dumps({"messages": [{"role": "user", "content": "q"}]}),
      json.dumps({"messages": [{"role": "robot", "content": "q"}]}),
      json.dumps({"id": "b"}),
  ]) + "\n")
  bad_rows = records.BadRows()
  assert [c["id"] for c in pipelines.load_conversations(path, bad_rows)] == ["a"]
  assert bad_rows.counts == {"malformed messages": 2, "missing field": 1}
  assert f"{path}:2" in bad_rows.examples["malformed messages"][0]
  rm_path = tmp_path / "rm.jsonl"
  rm_path.write_text(json.dumps({"messages": [], "responses": ["a"] * 6,
                                 "labels": [1, 0, 2, 0, 0, 0]}) + "\n")
  with pytest.raises(records.BadRowError, match=r"rm\.jsonl:1: malformed field"):
    pipelines.load_rm_lists(rm_path, records.BadRows(strict=True))


def test_iterator_state_goes_into_an_orbax_checkpoint(tok, conversations, tmp_path):
  cfg = _cfg(num_epochs=None, seed=3)
  iterator = iter(pipelines.sft_pipeline(conversations, tok, cfg))
  for _ in range(5):
    next(iterator)
  manager = ocp.CheckpointManager(tmp_path / "ckpt")
  manager.save(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator)))
  manager.wait_until_finished()
  expected = [next(iterator) for _ in range(3)]
  resumed = iter(pipelines.sft_pipeline(conversations, tok, cfg))
  manager.restore(5, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(resumed)))
  assert _equal_batches([next(resumed) for _ in range(3)], expected)


@pytest.mark.parametrize("field,value", [("responses", 5), ("responses", "abcdef"),
                                         ("responses", [1, 2, 3, 4, 5, 6]), ("labels", 5),
                                         ("labels", "101000")])
def test_rm_rows_with_a_field_of_the_wrong_type_name_file_and_line(tmp_path, field, value):
  row = {"messages": [{"role": "user", "content": "q"}], "responses": ["a"] * 6,
         "labels": [1, 0, 0, 0, 0, 0]}
  path = tmp_path / "rm.jsonl"
  path.write_text(json.dumps(row) + "\n" + json.dumps({**row, field: value}) + "\n")
  bad_rows = records.BadRows()
  assert len(pipelines.load_rm_lists(path, bad_rows)) == 1
  assert bad_rows.counts == {"malformed field": 1}
  assert bad_rows.examples["malformed field"][0].startswith(f"{path}:2: malformed field")
  assert field in bad_rows.examples["malformed field"][0]
