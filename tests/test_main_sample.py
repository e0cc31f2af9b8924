"""The sample stage end to end: a tiny model's graded responses become the next round's files."""

import json
import shutil

import pytest
from conftest import load_config

from qmath_jax import config_validation, main
from qmath_jax.data import records

OUTPUT = {"sft": "sft.jsonl", "rm": "rm.jsonl", "rl": "queries.jsonl"}


def small(config, decoder, problems=3):
  """`config` on the tiny decoder, synthetic problems and short responses."""
  config.tokenizer.path, config.init.params_dir, _ = decoder
  config.model.dtype = "float32"
  config.data.sources = ("synthetic",)
  config.data.num_examples = problems
  config.sample.max_new_tokens = 12
  config.sample.batch_size = 4
  return config


@pytest.mark.parametrize("task,n", [("sft", 8), ("rm", 6), ("rl", 8)])
def test_sample_stage_writes_the_round_files(tiny_decoder, tmp_path, task, n):
  config = small(load_config("sample.py", f"task={task}"), tiny_decoder)
  assert config.sample.n == n  # SPEC: 6 responses per RM query, 8 per RL query
  result = main.run(config, str(tmp_path))
  assert result["task"] == task and result["problems"] == 3
  rows = [row for _, row in records.read_jsonl(tmp_path / "problems.jsonl", records.BadRows())]
  assert len(rows) == 3 and all("num_correct" in row for row in rows)
  assert all(row.get("num_sampled", n) == n for row in rows)
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary == result["summary"]
  assert (tmp_path / OUTPUT[task]).is_file()


def test_sample_config_errors_before_compute(tiny_decoder, tmp_path):
  config = small(load_config("sample.py", "task=rm"), tiny_decoder)
  config.task = "dpo"
  config.sample.n = 5
  config.data.sources = ("synthetic", "nope/train", str(tmp_path / "missing.jsonl"))
  config.scorer.rm_checkpoint = str(tmp_path)
  with pytest.raises(config_validation.ConfigError) as err:
    main.run(config, str(tmp_path / "run"))
  message = str(err.value)
  for field in ("config.task", "unknown source 'nope/train'", "missing.jsonl",
                "config.scorer.rm_checkpoint"):
    assert field in message
  config.task = "rm"
  with pytest.raises(config_validation.ConfigError, match="list_size is 6"):
    main.run(config, str(tmp_path / "run"))


def test_bad_problem_rows_are_skipped_with_a_warning_naming_the_file(tmp_path, monkeypatch):
  path = tmp_path / "queries.jsonl"
  good = {"id": "a", "dataset": "synthetic", "question": "1 + 1?", "answer": "2"}
  path.write_text(json.dumps(good) + "\n" + json.dumps({"id": "b", "question": "?"}) + "\n")
  warnings = []
  monkeypatch.setattr(main.logging, "warning", lambda *args: warnings.append(args[0] % args[1:]))
  config = load_config("sample.py", "task=rl")
  config.data.sources = (str(path),)
  problems = main._problems(config)  # pylint: disable=protected-access
  assert [p.id for p in problems] == ["a"]
  assert len(warnings) == 1 and f"{path}: skipped 1 rows (missing field)" in warnings[0]
  assert f"{path}:2" in warnings[0]


def test_rerun_of_a_finished_round_keeps_its_files(tiny_decoder, tmp_path, monkeypatch):
  config = small(load_config("sample.py", "task=rl"), tiny_decoder, problems=2)
  first = main.run(config, str(tmp_path))
  files = {name: (tmp_path / name).read_bytes()
           for name in ("queries.jsonl", "problems.jsonl", "summary.json")}

  def no_sampling(*args):
    raise AssertionError("a finished round sampled again")

  monkeypatch.setattr(main, "_init_sampler", no_sampling)
  assert main.run(config, str(tmp_path)) == first  # the same summary, nothing resampled
  assert {name: (tmp_path / name).read_bytes() for name in files} == files
  config.sample.temperature = 1.0  # other settings: not these files' round
  with pytest.raises(ValueError, match=r"summary\.json: a finished sample round made with"):
    main.run(config, str(tmp_path))
  config.sample.temperature = first["summary"]["config"]["sample"]["temperature"]
  config.rl_queries.min_correct = 1  # the same samples, another selection
  with pytest.raises(ValueError, match=r"summary\.json: a finished sample round made with"):
    main.run(config, str(tmp_path))
  config.rl_queries.min_correct = 2
  config.data.num_examples = 3  # the same settings, another problem set
  with pytest.raises(ValueError, match=r"summary\.json: a finished sample round of 2 other "
                     "problems than the 3 of config.data.sources"):
    main.run(config, str(tmp_path))
  config.data.num_examples = 2
  rm_config = small(load_config("sample.py", "task=rm"), tiny_decoder, problems=2)
  with pytest.raises(ValueError, match=r"summary\.json: a finished sample round made with"):
    main.run(rm_config, str(tmp_path))
  other = tmp_path / "other_params"  # the same round's settings, another model's params
  shutil.copytree(tiny_decoder[1], other)
  config.init.params_dir = str(other)
  with pytest.raises(ValueError, match=r"models\.json: the samples in .* were made by"):
    main.run(config, str(tmp_path))
  assert {name: (tmp_path / name).read_bytes() for name in files} == files
