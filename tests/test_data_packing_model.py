"""Packed rows through the model: no token's attention reaches another segment."""

import jax
import numpy as np
import pytest

from qmath_jax.data import pipelines
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib
from qmath_jax.model import presets
from qmath_jax.model import transformer


@pytest.fixture(scope="module")
def packed_batch(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  tok = tokenizer_lib.train_byte_level_bpe(synthetic.corpus(200, seed=7), 400, path)
  conversations = pipelines.sft_conversations(synthetic.generate(24, seed=8))
  cfg = pipelines.PipelineConfig(batch_size=2, seq_len=1024, seed=1)
  batch = next(iter(pipelines.sft_pipeline(conversations, tok, cfg)))
  return tok, batch


def test_changing_one_segment_leaves_other_segments_logits_unchanged(packed_batch):
  tok, batch = packed_batch
  cfg = presets.get_config("tiny", vocab_size=tok.vocab_size)
  model = transformer.Transformer(cfg)
  params = transformer.init_params(cfg, jax.random.key(0))
  apply = jax.jit(lambda t: model.apply({"params": params}, t, batch["positions"],
                                        batch["segment_ids"]))
  row = int(np.argmax([len(np.unique(r)) for r in batch["segment_ids"]]))
  segments = np.unique(batch["segment_ids"][row][batch["segment_ids"][row] > 0])
  assert len(segments) >= 3, "the row should hold several packed examples"
  base = np.asarray(apply(batch["tokens"]))
  rng = np.random.default_rng(0)
  for changed in (segments[0], segments[len(segments) // 2]):
    inside = batch["segment_ids"][row] == changed
    tokens = batch["tokens"].copy()
    tokens[row, inside] = rng.integers(3, tok.vocab_size, inside.sum())
    logits = np.asarray(apply(tokens))
    others = (batch["segment_ids"][row] > 0) & ~inside
    np.testing.assert_allclose(logits[row, others], base[row, others], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits[1 - row], base[1 - row], atol=1e-5, rtol=1e-5)
    assert np.abs(logits[row, inside] - base[row, inside]).max() > 1e-3
