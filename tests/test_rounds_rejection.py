"""Rejection sampling round: top-k correct by RM score, dedupe, weighted vote, TIR, file format."""

import json

import numpy as np
import pytest

from qmath_jax.data import chat
from qmath_jax.data import pipelines
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.data import synthetic
from qmath_jax.data import tokenizer as tokenizer_lib
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import metrics
from qmath_jax.rounds import graded as graded_lib
from qmath_jax.rounds import rejection
from qmath_jax.sampling import types

LENGTH = types.FINISH_LENGTH


def _question(prompt: str) -> str:
  return prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]


class ScriptedSampler:
  """Answers each question with exactly the n scripted (text, finish reason) pairs given."""

  def __init__(self, script: dict[str, list]):
    self.script = script
    self.prompts = []

  def generate(self, prompts, n=1, **options):
    self.prompts.extend(prompts)
    out = []
    for prompt in prompts:
      entries = [e if isinstance(e, tuple) else (e, types.FINISH_STOP)
                 for e in self.script[_question(prompt)]]
      assert len(entries) == n, (len(entries), n)
      out.append([types.Completion(text=t, token_ids=[0], logprobs=[0.0], finish_reason=f,
                                   stop="<|im_end|>" if f == types.FINISH_STOP else None)
                  for t, f in entries])
    return out


class TableScorer:
  """Scores a conversation by a table of response texts (0 when absent); records its calls."""

  def __init__(self, table: dict[str, float]):
    self.table = table
    self.calls = 0

  def score(self, conversations):
    self.calls += 1
    for c in conversations:
      assert [m["role"] for m in c] == ["system", "user", "assistant"]
    return np.asarray([self.table.get(c[-1]["content"], 0.0) for c in conversations],
                      np.float32)


def _problem(i, answer, question=None):
  return sources.Problem(id=f"toy/{i}", dataset="toy/train", question=question or f"Q{i}?",
                         answer=answer)


# Gold "7": sample 1 scores best but is wrong; sample 3 repeats sample 2 up to whitespace;
# sample 5 is correct and scores high but was cut at max_new_tokens.
GOLD_SCRIPT = ["So 3 + 4 = \\boxed{7}.", "So 3 + 5 = \\boxed{8}.", "Add: \\boxed{7}",
               "Add:   \\boxed{7}\n", "Hence \\boxed{7.0}", ("Long \\boxed{7}", LENGTH)]
GOLD_SCORES = {GOLD_SCRIPT[0]: 1.0, GOLD_SCRIPT[1]: 9.0, GOLD_SCRIPT[2]: 3.0,
               GOLD_SCRIPT[3]: 5.0, GOLD_SCRIPT[4]: 2.0, GOLD_SCRIPT[5][0]: 8.0}
# No gold: "5" has more votes, "6" has more reward-model weight.
VOTE_SCRIPT = ["It is \\boxed{5}", "Maybe \\boxed{5}", "Thus \\boxed{5}", "Got \\boxed{6}",
               "Clearly \\boxed{6}", "No idea"]
VOTE_SCORES = {VOTE_SCRIPT[0]: -4.0, VOTE_SCRIPT[1]: -3.0, VOTE_SCRIPT[2]: -4.0,
               VOTE_SCRIPT[3]: 3.0, VOTE_SCRIPT[4]: 4.0}


def _graded(script, answer, scores=None, prompt_type="cot"):
  sampler = ScriptedSampler({"Q0?": script})
  cfg = graded_lib.SampleConfig(n=len(script), prompt_type=prompt_type)
  scorer = TableScorer(scores) if scores is not None else None
  return graded_lib.sample_and_grade(sampler, [_problem(0, answer)], cfg, scorer)[0]


def test_gold_keeps_top_k_correct_by_score_without_duplicates_or_truncated():
  g = _graded(GOLD_SCRIPT, "7", GOLD_SCORES)
  assert g.correct == [True, False, True, True, True, True]
  kept, stats = rejection.select(g, rejection.RejectionConfig(top_k=2))
  assert kept == [2, 4]
  kept, stats = rejection.select(g, rejection.RejectionConfig(top_k=10))
  assert kept == [2, 4, 0]
  assert stats["num_correct"] == 5 and stats["num_truncated"] == 1
  assert stats["num_matching"] == 4 and stats["num_distinct"] == 3 and stats["voted"] is None
  kept, _ = rejection.select(g, rejection.RejectionConfig(top_k=10, drop_truncated=False))
  assert kept == [5, 2, 4, 0]


def test_without_scores_keeps_sample_order():
  kept, _ = rejection.select(_graded(GOLD_SCRIPT, "7"), rejection.RejectionConfig(top_k=2))
  assert kept == [0, 2]


def test_no_gold_vote_is_weighted_by_scores():
  unweighted = _graded(VOTE_SCRIPT, "")
  assert unweighted.correct is None
  kept, stats = rejection.select(unweighted, rejection.RejectionConfig(top_k=2))
  assert stats["voted"] == "5" and kept == [0, 1]
  weighted = _graded(VOTE_SCRIPT, "", VOTE_SCORES)
  kept, stats = rejection.select(weighted, rejection.RejectionConfig(top_k=2))
  assert stats["voted"] == "6" and kept == [4, 3]
  assert stats["num_matching"] == 2 and stats["num_correct"] is None


@pytest.mark.parametrize("preds", [["1", "2", "2", "1"], ["", "", "3"], ["4", "5"], ["", ""],
                                   ["9", "8", "8", "9", "7", "9"]])
def test_uniform_vote_matches_majority_index(preds):
  voted = rejection.weighted_vote(preds, [1.0] * len(preds))
  index = metrics.majority_index(preds)
  assert voted == preds[index] or (voted == "" and not any(preds))


def test_tir_keeps_distinct_matching_transcripts_in_sample_order(tmp_path):
  transcripts = [
      "Compute.\n```python\nprint(3 + 4)\n```\n```output\n7\n```\nSo \\boxed{7}.",
      "Compute.\n```python\nprint(3 * 4)\n```\n```output\n12\n```\nSo \\boxed{12}.",
      "Compute.\n```python\nprint(3 + 4)\n```\n```output\n7\n```\nSo  \\boxed{7}.",
      "Again.\n```python\nx = 3\nprint(x + 4)\n```\n```output\n7\n```\nThe answer is 7."]
  sampler = ScriptedSampler({"Q0?": transcripts})
  cfg = graded_lib.SampleConfig(n=4, prompt_type="tir")
  g = graded_lib.sample_and_grade(sampler, [_problem(0, "7")], cfg)[0]
  assert chat.TIR_SYSTEM in sampler.prompts[0]
  kept, _ = rejection.select(g, rejection.RejectionConfig(top_k=4))
  assert kept == [0, 3]
  rows = rejection.sft_rows(g, kept)
  assert rows[0]["messages"][0] == {"role": "system", "content": chat.TIR_SYSTEM}
  assert rows[1]["messages"][2]["content"] == transcripts[3]
  # SFT on the kept transcript trains on the model's text and code, not the interpreter output.
  byte_tokenizer = tokenizer_lib.train_byte_level_bpe(["abc"], 256 + 3,
                                                      tmp_path / "tokenizer.json")
  ids, mask = chat.encode(byte_tokenizer, rows[0]["messages"])
  assert byte_tokenizer.decode([i for i, m in zip(ids, mask) if m]) == (
      "Compute.\n```python\nprint(3 + 4)\n```So \\boxed{7}.<|im_end|>")
  # Synthetic problems without gold: the plain majority answer ("7", 3 votes to 1).
  g = graded_lib.sample_and_grade(ScriptedSampler({"Q0?": transcripts}), [_problem(0, "")],
                                  cfg)[0]
  kept, stats = rejection.select(g, rejection.RejectionConfig(top_k=4))
  assert stats["voted"] == "7" and kept == [0, 3]


def _round(out_dir, batch_size=2):
  problems = [_problem(0, "7"), _problem(1, ""), _problem(2, "1", "Q2?")]
  script = {"Q0?": GOLD_SCRIPT, "Q1?": VOTE_SCRIPT, "Q2?": ["\\boxed{2}"] * 6}
  scorer = TableScorer({**GOLD_SCORES, **VOTE_SCORES})
  cfg = graded_lib.SampleConfig(n=6, batch_size=batch_size, seed=3)
  summary = rejection.rejection_round(ScriptedSampler(script), problems, out_dir, cfg,
                                      rejection.RejectionConfig(top_k=2), scorer)
  return summary, scorer


def test_round_files_summary_and_determinism(tmp_path):
  summary, scorer = _round(tmp_path / "a")
  assert scorer.calls == 2   # one scorer call per sampler batch
  assert summary["num_problems"] == 3 and summary["num_with_gold"] == 2
  assert summary["num_correct"] == 5 and summary["pass_rate"] == pytest.approx(5 / 12)
  assert summary["num_kept"] == 4 and summary["kept_per_problem"] == {"0": 1, "2": 2}
  assert summary["num_solved"] == 1 and summary["config"]["rejection"]["top_k"] == 2
  per_problem = [row for _, row in records.read_jsonl(tmp_path / "a" / "problems.jsonl",
                                                      records.BadRows(strict=True))]
  assert [(p["num_kept"], p["voted"]) for p in per_problem] == [(2, None), (2, "6"), (0, None)]
  _round(tmp_path / "b", batch_size=2)
  for name in ("sft.jsonl", "problems.jsonl", "summary.json"):
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
  assert json.loads((tmp_path / "a" / "summary.json").read_text()) == summary


def test_sft_pipeline_reads_the_round(tmp_path):
  _round(tmp_path)
  bad_rows = records.BadRows(strict=True)
  conversations = pipelines.load_conversations(tmp_path / "sft.jsonl", bad_rows)
  assert [c["id"] for c in conversations] == ["toy/0#cot2", "toy/0#cot4", "toy/1#cot4",
                                              "toy/1#cot3"]
  assert conversations[0]["messages"][2]["content"] == GOLD_SCRIPT[2]
  texts = synthetic.corpus(100, seed=1) + [chat.render(c["messages"]) for c in conversations]
  tok = tokenizer_lib.train_byte_level_bpe(texts, 400, tmp_path / "tok" / "tokenizer.json")
  cfg = pipelines.PipelineConfig(batch_size=2, seq_len=128, shuffle=False)
  batch = next(iter(pipelines.sft_pipeline(conversations, tok, cfg)))
  assert batch["tokens"].shape == (2, 128) and batch["loss_mask"].sum() > 0


def test_grading_follows_the_evaluation_choice_rule():
  # cn_middle_school, gaokao2024_* mix open and multiple-choice problems; a letter gold makes
  # the problem multiple choice for the evaluation (`benchmarks.grade`), options or not, and the
  # rounds must grade its samples the same way.
  responses = ["Thus \\boxed{B: 12}", "The correct choice is B.", "So \\boxed{C}", "\\boxed{12}"]
  for dataset, answer in (("cn_middle_school/test", "B"), ("gaokao2024_I/test", "B"),
                          ("cn_middle_school/test", "12"), ("aqua/test", "B")):
    problem = sources.Problem(id="p/0", dataset=dataset, question="Pick one.", answer=answer)
    g = graded_lib.grade(problem, "cot", responses, [types.FINISH_STOP] * len(responses))
    kind = dataset.split("/")[0]
    bench_problem = benchmarks.to_eval_problem(problem, kind, 0, kind)
    preds, correct = benchmarks.grade(bench_problem, responses, kind)
    assert (g.preds, g.correct) == (preds, correct), dataset
  assert g.correct == [True, True, False, False]   # aqua: letters
