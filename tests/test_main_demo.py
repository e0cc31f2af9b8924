"""`python -m qmath_jax.main --config=configs/demo.py` end to end, shortened (`quick=1`):
tokenizer, pretrain, SFT, reward model, GRPO and the final greedy accuracy."""

import json
import os
import subprocess
import sys

import pytest

from qmath_jax.train import checkpoint as checkpoint_lib
from qmath_jax.train import loop
from qmath_jax.train import metrics_writer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_quick_demo_runs_every_stage(tmp_path):
  workdir = tmp_path / "demo"
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  proc = subprocess.run(
      [sys.executable, "-m", "qmath_jax.main", "--config=configs/demo.py:quick=1",
       f"--workdir={workdir}"],
      cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert (workdir / "tokenizer.model").exists()
  for stage in ("pretrain", "sft"):
    rows = metrics_writer.read_metrics(workdir / stage)
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) >= 3, rows
    assert losses[-1] < losses[0] - 0.2, (stage, losses)  # the loss falls
    assert all(r["tokens_per_sec_per_device"] > 0 for r in rows if "loss" in r)
    checkpointer = checkpoint_lib.Checkpointer(workdir / stage / loop.CHECKPOINT_DIR)
    assert checkpointer.latest_step() == 12
    assert checkpointer.read_meta()["stage"] == stage
    checkpointer.close()
  sft_rows = metrics_writer.read_metrics(workdir / "sft")
  assert [r["step"] for r in sft_rows if "eval/loss" in r] == [6, 12]
  # SFT started from the pretrained weights, not from scratch: its first loss is far below
  # the uniform-guess loss log(384) = 5.95 that a fresh model starts near.
  assert sft_rows[0]["loss"] < 5.0
  assert "step 12/12 | loss" in proc.stderr  # the per-logging-step line
  # The reward model trains from the SFT model; GRPO runs from the SFT model with its reward.
  rm_rows = [r for r in metrics_writer.read_metrics(workdir / "rm") if "loss" in r]
  assert [r["step"] for r in rm_rows] == [2, 4]
  rl_rows = metrics_writer.read_metrics(workdir / "rl")
  assert [r["step"] for r in rl_rows] == [1, 2]
  for row in rl_rows:
    assert -1.0 < row["reward"] < 1.0 and row["ratio"] == pytest.approx(1.0, abs=1e-4)
  checkpointer = checkpoint_lib.Checkpointer(workdir / "rl" / loop.CHECKPOINT_DIR)
  assert checkpointer.read_meta()["stage"] == "rl"
  checkpointer.close()
  reports = json.loads((workdir / "accuracy.json").read_text())
  assert list(reports) == ["sft", "rl"]
  assert reports["sft"]["step"] == 12 and reports["rl"]["step"] == 2  # each run's last step
  for accuracy in reports.values():
    assert accuracy["total"] == 8
    assert accuracy["correct"] == sum(e["correct"] for e in accuracy["examples"])
    assert all(e["id"].startswith("synthetic/test/") for e in accuracy["examples"])
    assert all(int(e["gold"]) <= 20 for e in accuracy["examples"])  # the demo's easy knobs


def test_pipeline_seed_reaches_every_stage(tmp_path, monkeypatch):
  from qmath_jax import main  # pylint: disable=g-import-not-at-top
  from conftest import load_config  # pylint: disable=g-import-not-at-top
  config = load_config("demo.py", "quick=1")
  config.seed = 3
  config.stages = ("pretrain", "sft")
  config.report.num_problems = 0
  seeds = {}
  for stage in config.stages:
    monkeypatch.setitem(main.STAGES, stage,
                        lambda sub, workdir: seeds.update({sub.stage: sub.seed}) or {})
  main.run_pipeline(config, str(tmp_path / "demo"))
  assert seeds == {"pretrain": 3, "sft": 3}

  # An eval stage samples with eval.seed: the pipeline's seed is that one.
  config.stages = ("pretrain", "eval")
  config.eval = load_config("eval.py", "mode=maj8")
  config.eval.init.checkpoint = "pretrain"
  monkeypatch.setitem(main.STAGES, "eval", lambda sub, workdir: seeds.update(
      {"eval": (sub.seed, sub.eval.seed)}) or {})
  monkeypatch.setitem(main.STAGE_CHECKS, "eval", lambda sub: [])
  main.run_pipeline(config, str(tmp_path / "demo"))
  assert seeds["eval"] == (3, 3)
