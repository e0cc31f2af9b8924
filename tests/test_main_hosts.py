"""Multi-host rules of the entry point: files under the shared workdir are written once, by the
writer, and the other processes read them after a barrier (`parallel.hosts`)."""

import shutil

import ml_collections
import pytest
from conftest import load_config

from qmath_jax import main
from qmath_jax.data import tokenizer as tokenizer_lib


@pytest.fixture
def non_writer(monkeypatch, tiny_decoder):
  """This process is not the writer; at each barrier the writer has trained the tokenizer.

  Returns the barrier names reached. Training a tokenizer here fails the test.
  """
  barriers = []

  def barrier(name, workdir):
    barriers.append(name)
    shutil.copy(tiny_decoder[0], workdir / main.TOKENIZER_FILE)

  def train(*args, **kwargs):
    raise AssertionError("a process other than the writer trained the tokenizer")

  monkeypatch.setattr(main.hosts, "is_writer", lambda: False)
  monkeypatch.setattr(tokenizer_lib, "train_sentencepiece", train)
  return barriers, barrier


def test_only_the_writer_trains_a_stage_tokenizer(non_writer, monkeypatch, tmp_path):
  barriers, barrier = non_writer
  monkeypatch.setattr(main.hosts, "barrier", lambda name: barrier(name, tmp_path))
  config = ml_collections.ConfigDict(load_config("demo.py", "quick=1").pretrain.to_dict())
  config.tokenizer.train_vocab_size = 384
  tokenizer = main._tokenizer(config, str(tmp_path))  # pylint: disable=protected-access
  assert barriers == ["tokenizer trained"] and tokenizer.vocab_size == 384


def test_only_the_writer_trains_the_pipeline_tokenizer(non_writer, monkeypatch, tmp_path):
  barriers, barrier = non_writer
  monkeypatch.setattr(main.hosts, "barrier", lambda name: barrier(name, tmp_path))
  config = load_config("demo.py", "quick=1")
  config.stages = ("pretrain",)
  config.report.num_problems = 0
  seen = []
  monkeypatch.setitem(main.STAGES, "pretrain",
                      lambda sub, workdir: seen.append(sub.tokenizer.path) or {})
  main.run_pipeline(config, str(tmp_path))
  assert barriers == ["pipeline tokenizer trained"]
  assert seen == [str(tmp_path / main.TOKENIZER_FILE)]
