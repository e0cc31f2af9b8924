"""RM lists (labels, dropped queries, balance rule, seeds, rm_pipeline) and RL query selection."""

import math
import random
import statistics

import pytest

from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib
from qmath_jax.rounds import graded as graded_lib
from qmath_jax.rounds import rl_queries
from qmath_jax.rounds import rm_data
from qmath_jax.sampling import types


class PatternSampler:
  """For question "Q<i>?" with gold g, returns n responses of which num_correct[i] box g.

  The correct ones sit at seeded positions; the wrong ones box g + 1.
  """

  def __init__(self, num_correct: dict[int, int], gold: dict[int, int]):
    self.num_correct, self.gold = num_correct, gold

  def generate(self, prompts, n=1, **options):
    out = []
    for prompt in prompts:
      i = int(prompt.rsplit("<|im_start|>user\nQ", 1)[1].split("?", 1)[0])
      right = set(random.Random(i).sample(range(n), self.num_correct[i]))
      texts = [f"Step {j} of Q{i}: \\boxed{{{self.gold[i] + (j not in right)}}}"
               for j in range(n)]
      out.append([types.Completion(text=t, token_ids=[0], logprobs=[0.0],
                                   finish_reason=types.FINISH_STOP) for t in texts])
    return out


def _problems(num_correct: dict[int, int], no_gold=()):
  gold = {i: 10 + i for i in num_correct}
  problems = [sources.Problem(id=f"toy/{i}", dataset="toy/train", question=f"Q{i}?",
                              answer="" if i in no_gold else str(gold[i]))
              for i in num_correct]
  return problems, PatternSampler(num_correct, gold)


def _read(path):
  return [row for _, row in records.read_jsonl(path, records.BadRows(strict=True))]


def test_labels_and_dropped_queries(tmp_path):
  num_correct = {0: 0, 1: 6, 2: 1, 3: 3, 4: 5, 5: 2}
  problems, sampler = _problems(num_correct, no_gold=(5,))
  cfg = rm_data.RmDataConfig(difficulty_cap=None, positive_fraction=None)
  summary = rm_data.rm_data_round(sampler, problems, tmp_path, graded_lib.SampleConfig(n=6), cfg)
  rows = _read(tmp_path / "rm.jsonl")
  assert [r["id"] for r in rows] == ["toy/2#cot", "toy/3#cot", "toy/4#cot"]
  for row in rows:
    i = int(row["source"]["problem_id"].split("/")[1])
    assert row["labels"] == [int(f"\\boxed{{{10 + i}}}" in r) for r in row["responses"]]
    assert sum(row["labels"]) == num_correct[i] and len(row["responses"]) == 6
    assert row["messages"] == [{"role": "system", "content": chat.COT_SYSTEM},
                               {"role": "user", "content": f"Q{i}?"}]
  status = {r["id"]: r["status"] for r in _read(tmp_path / "problems.jsonl")}
  assert status == {"toy/0": "all wrong", "toy/1": "all correct", "toy/2": "kept",
                    "toy/3": "kept", "toy/4": "kept", "toy/5": "no gold"}
  assert (summary["num_all_wrong"], summary["num_all_correct"], summary["num_no_gold"]) == (1, 1, 1)
  assert summary["positive_fraction"] == pytest.approx(9 / 18)
  with pytest.raises(ValueError, match="list_size"):
    rm_data.rm_data_round(sampler, problems, tmp_path, graded_lib.SampleConfig(n=8), cfg)


def test_cot_and_tir_lists_mix(tmp_path):
  problems, sampler = _problems({0: 2, 1: 4})
  graded = [g for prompt_type in ("cot", "tir") for g in graded_lib.sample_and_grade(
      sampler, problems, graded_lib.SampleConfig(n=6, prompt_type=prompt_type))]
  cfg = rm_data.RmDataConfig(difficulty_cap=None, positive_fraction=None)
  rm_data.write_rm_data(graded, tmp_path, cfg)
  rows = _read(tmp_path / "rm.jsonl")
  assert [r["id"] for r in rows] == ["toy/0#cot", "toy/1#cot", "toy/0#tir", "toy/1#tir"]
  assert [r["messages"][0]["content"] for r in rows] == [chat.COT_SYSTEM] * 2 + [
      chat.TIR_SYSTEM] * 2


def _population(counts: dict[int, int], seed=0):
  """Graded records with the given number of queries per correct count (out of 6)."""
  rng = random.Random(seed)
  out = []
  for k, count in counts.items():
    for _ in range(count):
      i = len(out)
      problem = sources.Problem(id=f"pop/{i}", dataset="pop/train", question=f"Q{i}?",
                                answer="1")
      correct = [True] * k + [False] * (6 - k)
      rng.shuffle(correct)
      out.append(graded_lib.Graded(
          problem=problem, prompt_type="cot", messages=pipelines.prompt_messages(problem),
          responses=[f"r{j} \\boxed{{{int(not c) + 1}}}" for j, c in enumerate(correct)],
          finish_reasons=["stop"] * 6, preds=[str(int(not c) + 1) for c in correct],
          correct=correct))
  rng.shuffle(out)
  return out


EASY = {0: 30, 6: 20, 1: 10, 2: 40, 3: 60, 4: 120, 5: 200}
HARD = {0: 50, 6: 5, 1: 300, 2: 90, 3: 50, 4: 20, 5: 5}


@pytest.mark.parametrize("counts", [EASY, HARD], ids=["easy", "hard"])
def test_balance_rule_holds(tmp_path, counts):
  cfg = rm_data.RmDataConfig()
  summary = rm_data.write_rm_data(_population(counts), tmp_path, cfg)
  rows = _read(tmp_path / "rm.jsonl")
  kept = {k: 0 for k in range(1, 6)}
  for row in rows:
    kept[sum(row["labels"])] += 1
  cap = math.ceil(cfg.difficulty_cap * statistics.median(counts[k] for k in range(1, 6)))
  share_before = sum(k * counts[k] for k in range(1, 6)) / (6 * sum(counts[k] for k in kept))
  assert not 0.45 <= share_before <= 0.55   # the population needs the ratio rule
  share = sum(sum(r["labels"]) for r in rows) / (6 * len(rows))
  assert 0.45 <= share <= 0.55 and share == pytest.approx(summary["positive_fraction"])
  heavy = (lambda k: k > 3) if share_before > 0.5 else (lambda k: k < 3)
  for k in range(1, 6):
    assert kept[k] <= min(counts[k], cap)
    if not heavy(k):   # the light side and k = 3 only lose lists to the cap
      assert kept[k] == min(counts[k], cap)
  assert {str(k): v for k, v in kept.items()} == summary["lists_per_num_correct"]
  assert summary["num_kept"] == len(rows) == sum(kept.values())
  assert (summary["num_all_wrong"], summary["num_all_correct"]) == (counts[0], counts[6])


def test_seed_determinism(tmp_path):
  population = _population(EASY)
  for name, seed in (("a", 0), ("b", 0), ("c", 1)):
    rm_data.write_rm_data(population, tmp_path / name, rm_data.RmDataConfig(seed=seed))
  files = ("rm.jsonl", "problems.jsonl", "summary.json")
  for name in files:
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  ids = {name: [r["id"] for r in _read(tmp_path / name / "rm.jsonl")] for name in "ac"}
  assert len(ids["a"]) == len(ids["c"]) and ids["a"] != ids["c"]


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
  texts = synthetic.corpus(100, seed=1) + [f"Step {j} of Q{i}: \\boxed{{{i}}}"
                                           for i in range(20) for j in range(8)]
  return tokenizer_lib.train_byte_level_bpe(texts, 400, path)


def test_rm_pipeline_reads_the_lists(tmp_path, tok):
  problems, sampler = _problems({i: 1 + i % 5 for i in range(6)})
  rm_data.rm_data_round(sampler, problems, tmp_path, graded_lib.SampleConfig(n=6),
                        rm_data.RmDataConfig(difficulty_cap=None, positive_fraction=None))
  lists = pipelines.load_rm_lists(tmp_path / "rm.jsonl", records.BadRows(strict=True))
  assert len(lists) == 6
  cfg = pipelines.PipelineConfig(batch_size=2, seq_len=128, shuffle=False)
  batch = next(iter(pipelines.rm_pipeline(lists, tok, cfg)))
  assert batch["tokens"].shape == (2, 6, 128)
  assert batch["labels"].tolist() == [lists[0]["labels"], lists[1]["labels"]]


def test_rl_queries_keep_two_to_five_of_eight(tmp_path, tok):
  num_correct = {i: i for i in range(9)} | {9: 3}
  problems, sampler = _problems(num_correct, no_gold=(9,))
  summary = rl_queries.rl_queries_round(sampler, problems, tmp_path,
                                        graded_lib.SampleConfig(n=8))
  kept = sources.load_jsonl_problems(tmp_path / "queries.jsonl", strict=True)
  assert kept == [p for p in problems if p.answer and 2 <= num_correct[int(p.id[4:])] <= 5]
  assert summary["num_kept"] == 4 and summary["num_no_gold"] == 1
  assert summary["queries_per_num_correct"] == {str(k): 1 for k in range(9)}
  cfg = pipelines.PipelineConfig(batch_size=2, seq_len=128, shuffle=False)
  batch = next(iter(pipelines.rl_pipeline(kept, tok, cfg)))
  assert batch["answer"].tolist() == [kept[0].answer, kept[1].answer]
  with pytest.raises(ValueError, match="max_correct"):
    rl_queries.rl_queries_round(sampler, problems, tmp_path, graded_lib.SampleConfig(n=4))
