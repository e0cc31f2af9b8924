"""The eval runner end to end with a scripted sampler (the model is the only fake here)."""

import itertools
import json
import math

import pytest

from qmath_jax.data import chat
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import metrics
from qmath_jax.evaluation import report
from qmath_jax.evaluation import runner
from qmath_jax.sampling import types


def _question(prompt: str) -> str:
  return prompt.rsplit("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]


class ScriptedSampler:
  """Answers each question with a fixed list of responses (cycled to n); records calls."""

  def __init__(self, script: dict[str, list[str]], default: str = "I do not know."):
    self.script = script
    self.default = default
    self.calls = []

  def generate(self, prompts_, n=1, *, temperature=0.0, top_p=1.0, top_k=0,
               max_new_tokens=256, stop=(), seed=0):
    self.calls.append({"prompts": list(prompts_), "n": n, "temperature": temperature,
                       "top_p": top_p, "stop": tuple(stop), "seed": seed,
                       "max_new_tokens": max_new_tokens})
    out = []
    for prompt in prompts_:
      user = _question(prompt)  # few-shot sets put the exemplars before the question
      texts = next((v for k, v in self.script.items() if user.endswith(k)), [self.default])
      out.append([types.Completion(text=t, token_ids=[0], logprobs=[0.0],
                                   finish_reason=types.FINISH_STOP, stop="<|im_end|>")
                  for t in itertools.islice(itertools.cycle(texts), n)])
    return out


def _write_gsm8k(root, answers):
  path = root / "gsm8k" / "test.jsonl"
  path.parent.mkdir(parents=True, exist_ok=True)
  rows = [{"question": f"Synthetic question {k}?", "answer": f"steps\n#### {a}", "idx": k}
          for k, a in enumerate(answers)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return [r["question"] for r in rows]


SCRIPT_RESPONSES = [
    (["\\boxed{1}", "\\boxed{2}", "\\boxed{2}", "\\boxed{1}"], [0.1, 0.9, 0.9, 0.2]),
    (["\\boxed{5}", "\\boxed{2}", "\\boxed{2}", "\\boxed{7}"], [0.5, 0.5, 0.1, 0.5]),
    (["\\boxed{0}", "\\boxed{9}", "\\boxed{8}", "\\boxed{0}"], [0.3, 0.2, 0.1, 0.0]),
    (["The answer is 4.", "so \\boxed{4}", "4", "\\boxed{4.0}"], [0.0, 0.0, 0.0, 0.0]),
]


@pytest.fixture()
def synthetic(tmp_path):
  data = tmp_path / "data"
  questions = _write_gsm8k(data, [1, 2, 3, 4])
  script = {q: r for q, (r, _) in zip(questions, SCRIPT_RESPONSES)}
  scores = {q: s for q, (_, s) in zip(questions, SCRIPT_RESPONSES)}

  def score_fn(prompt_texts, responses):
    assert [len(r) for r in responses] == [4] * len(prompt_texts)
    return [scores[_question(p)] for p in prompt_texts]

  return data, script, score_fn


def test_maj_rm_and_pass_at_k_on_synthetic_rows(synthetic, tmp_path):
  data, script, score_fn = synthetic
  sampler = ScriptedSampler(script)
  config = runner.EvalConfig(datasets=("gsm8k",), n=4, temperature=0.7, top_p=0.8,
                             pass_k=(1, 2, 4), data_dir=str(data), batch_size=3, seed=5)
  results = runner.run_eval(sampler, tmp_path / "work", config, score_fn=score_fn)
  scores = results["datasets"]["gsm8k"]
  assert scores["num_problems"] == 4
  assert scores["acc"] == pytest.approx(50.0)
  assert scores["maj"] == pytest.approx(75.0)       # ties go to the answer seen first
  assert scores["rm"] == pytest.approx(25.0)        # argmax, first on ties
  assert scores["pass@1"] == pytest.approx(50.0)
  assert scores["pass@2"] == pytest.approx(100 * (5 / 6 * 2 + 1) / 4)
  assert scores["pass@4"] == pytest.approx(75.0)
  assert results["metric"] == "rm" and results["metric_label"] == "rm@4"
  # Sampling settings reach the sampler; seeds follow the first problem of each batch.
  assert [c["seed"] for c in sampler.calls] == [5, 8]
  assert all(c["temperature"] == 0.7 and c["top_p"] == 0.8 and c["n"] == 4 and
             c["stop"] == runner.STOP_STRINGS for c in sampler.calls)


def test_greedy_run_writes_json_markdown_and_png(synthetic, tmp_path):
  data, script, _ = synthetic
  work = tmp_path / "work"
  results = runner.run_eval(ScriptedSampler(script), work,
                            runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data)))
  assert results["datasets"]["gsm8k"]["acc"] == pytest.approx(50.0)
  assert results["metric_label"] == "greedy"
  assert json.loads((work / report.RESULTS_JSON).read_text()) == results
  table = (work / report.REPORT_MD).read_text()
  assert "| gsm8k | 4 | 50.0 |" in table
  assert (work / report.SCORES_PNG).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  records = [json.loads(l) for l in (work / "samples" / "gsm8k.jsonl").read_text().splitlines()]
  assert [r["index"] for r in records] == [0, 1, 2, 3]
  assert records[0]["preds"] == ["1"] and records[0]["correct"] == [True]


def test_resume_samples_only_missing_problems(synthetic, tmp_path):
  data, script, _ = synthetic
  work = tmp_path / "work"
  first = ScriptedSampler(script)
  runner.run_eval(first, work, runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data),
                                                 limit=2))
  assert sum(len(c["prompts"]) for c in first.calls) == 2
  samples = work / "samples" / "gsm8k.jsonl"
  with open(samples, "a") as f:
    f.write('{"index": 3, "id": "torn')     # a crash in the middle of an append
  second = ScriptedSampler(script)
  resumed = runner.run_eval(second, work, runner.EvalConfig(datasets=("gsm8k",),
                                                            data_dir=str(data)))
  assert sum(len(c["prompts"]) for c in second.calls) == 2
  fresh = runner.run_eval(ScriptedSampler(script), tmp_path / "fresh",
                          runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data)))
  assert resumed["datasets"] == fresh["datasets"]
  lines = samples.read_text().splitlines()
  assert sorted(json.loads(l)["index"] for l in lines) == [0, 1, 2, 3]
  third = ScriptedSampler(script)
  runner.run_eval(third, work, runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data)))
  assert not third.calls


def test_resume_adding_or_dropping_the_reward_model(synthetic, tmp_path):
  """Samples cached without RM scores are scored when a later run has a reward model (the
  same samples also give RM@N); a run without one reports no RM@N for partly scored files."""
  data, script, score_fn = synthetic
  config = dict(datasets=("gsm8k",), n=4, temperature=0.7, top_p=0.8, pass_k=(1,),
                data_dir=str(data), batch_size=3)
  fresh = runner.run_eval(ScriptedSampler(script), tmp_path / "fresh",
                          runner.EvalConfig(**config), score_fn=score_fn)
  work = tmp_path / "work"
  runner.run_eval(ScriptedSampler(script), work, runner.EvalConfig(**config, limit=2))
  second = ScriptedSampler(script)
  resumed = runner.run_eval(second, work, runner.EvalConfig(**config), score_fn=score_fn)
  assert resumed["datasets"] == fresh["datasets"] and resumed["metric"] == "rm"
  assert sum(len(c["prompts"]) for c in second.calls) == 2   # only the missing problems
  lines = (work / "samples" / "gsm8k.jsonl").read_text().splitlines()
  assert sorted(json.loads(l)["index"] for l in lines) == [0, 1, 2, 3]
  assert all(json.loads(l)["scores"] is not None for l in lines)

  partly = tmp_path / "partly"
  runner.run_eval(ScriptedSampler(script), partly, runner.EvalConfig(**config, limit=2),
                  score_fn=score_fn)
  unscored = runner.run_eval(ScriptedSampler(script), partly, runner.EvalConfig(**config))
  assert "rm" not in unscored["datasets"]["gsm8k"]
  assert unscored["datasets"]["gsm8k"]["maj"] == fresh["datasets"]["gsm8k"]["maj"]


def test_resume_with_other_settings_or_corrupt_file_is_an_error(synthetic, tmp_path):
  data, script, _ = synthetic
  work = tmp_path / "work"
  runner.run_eval(ScriptedSampler(script), work,
                  runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data), limit=1))
  with pytest.raises(ValueError, match="gsm8k.jsonl:1: made with eval settings"):
    runner.run_eval(ScriptedSampler(script), work,
                    runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data), n=2))
  samples = work / "samples" / "gsm8k.jsonl"
  samples.write_text("{oops\n" + samples.read_text())
  with pytest.raises(ValueError, match="gsm8k.jsonl:1: corrupt"):
    runner.run_eval(ScriptedSampler(script), work,
                    runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data)))


def test_sampler_returning_wrong_counts_is_an_error(synthetic, tmp_path):
  data, _, _ = synthetic

  class Short(ScriptedSampler):
    def generate(self, prompts_, n=1, **kwargs):
      return super().generate(prompts_, n, **kwargs)[:-1]

  with pytest.raises(ValueError, match="completions"):
    runner.run_eval(Short({}), tmp_path / "w",
                    runner.EvalConfig(datasets=("gsm8k",), data_dir=str(data)))


def test_pass_at_k_matches_enumeration():
  for n in range(1, 7):
    for c in range(n + 1):
      for k in range(1, n + 1):
        outcomes = [1] * c + [0] * (n - c)
        subsets = list(itertools.combinations(range(n), k))
        brute = sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)
        assert math.isclose(metrics.pass_at_k(n, c, k), brute), (n, c, k)
  with pytest.raises(ValueError):
    metrics.pass_at_k(4, 5, 1)


def test_majority_and_best_score_tie_rules():
  assert metrics.majority_index(["", "3", "4", "4", "3"]) == 1
  assert metrics.majority_index(["", ""]) == 0
  assert metrics.best_score_index([0.2, 0.7, 0.7]) == 1


@pytest.mark.parametrize("prompt_type", ["cot", "tir"])
def test_every_dataset_slice_end_to_end(data_dir, tmp_path, prompt_type):
  """Real files, 2 problems each: a sampler that boxes the gold scores 100 everywhere."""
  names = benchmarks.available(data_dir, groups=("en", "zh", "competition", "extra"))
  script = {}
  for name in names:
    for p in benchmarks.load(name, data_dir, limit=2):
      script[p.question] = [f"Reasoning.\nThe final answer is \\boxed{{{p.gold}}}.",
                            "\\boxed{-12345}"]
  sampler = ScriptedSampler(script)
  config = runner.EvalConfig(datasets=tuple(names), prompt_type=prompt_type, n=2, limit=2,
                             temperature=0.7, top_p=0.8, pass_k=(1, 2), data_dir=str(data_dir))
  results = runner.run_eval(sampler, tmp_path, config)
  assert set(results["datasets"]) == set(names)
  for name, scores in results["datasets"].items():
    assert scores["acc"] == 100.0 and scores["pass@1"] == 50.0, (name, scores)
  assert set(results["averages"]) == {"en_avg", "zh_avg", "all_avg"}
  system = chat.SYSTEM_PROMPTS[prompt_type]
  assert all(p.startswith(f"<|im_start|>system\n{system}<|im_end|>")
             for c in sampler.calls for p in c["prompts"])
  assert (tmp_path / report.SCORES_PNG).stat().st_size > 1000


def test_config_from_mapping():
  config = runner.EvalConfig.from_mapping({"datasets": ["math"], "n": 8, "temperature": 0.7})
  assert config.datasets == ("math",) and config.n == 8 and config.top_p == 1.0
  with pytest.raises(ValueError, match="unknown eval settings \\['tempreature'\\]"):
    runner.EvalConfig.from_mapping({"tempreature": 0.7})


def test_chinese_choice_sets_are_few_shot_only_for_one_letter_golds(tmp_path):
  """As in Qwen's harness: a cn_middle_school row with gold 'B' gets the 5-shot exemplars; a
  multi-select 'ABD' and a value gold are zero-shot (the gold never enters the text)."""
  path = tmp_path / "data" / "cn_middle_school" / "test.jsonl"
  path.parent.mkdir(parents=True)
  rows = [{"idx": 0, "question": "合成题一 A.1 B.2", "answer": "2", "choice_answer": "B"},
          {"idx": 1, "question": "合成题二 A.1 B.2 C.3 D.4", "answer": "1,2,4",
           "choice_answer": "ABD"},
          {"idx": 2, "question": "合成题三", "answer": "7", "choice_answer": ""}]
  path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
  sampler = ScriptedSampler({})
  runner.run_eval(sampler, tmp_path / "work", runner.EvalConfig(
      datasets=("cn_middle_school",), data_dir=str(tmp_path / "data")))
  users = [_question(p) for p in sampler.calls[0]["prompts"]]
  assert users[0].endswith("合成题一 A.1 B.2") and len(users[0]) > 200   # exemplars first
  assert users[1:] == ["合成题二 A.1 B.2 C.3 D.4", "合成题三"]
  assert all(gold not in users[1] for gold in ("ABD", "1,2,4"))


def test_reward_model_reads_the_question_without_few_shot_exemplars(tmp_path):
  """RM@N on a few-shot set: the sampler's prompt holds the exemplars, the RM's does not
  (SPEC: the RM reads [system, user question, assistant response])."""
  path = tmp_path / "data" / "cn_middle_school" / "test.jsonl"
  path.parent.mkdir(parents=True)
  path.write_text(json.dumps({"idx": 0, "question": "合成题 A.1 B.2", "answer": "2",
                              "choice_answer": "B"}, ensure_ascii=False) + "\n")
  seen = []

  def score_fn(prompt_texts, responses):
    seen.extend(prompt_texts)
    return [[0.0] * len(r) for r in responses]

  sampler = ScriptedSampler({"合成题 A.1 B.2": ["\\boxed{B}"]})
  runner.run_eval(sampler, tmp_path / "work", runner.EvalConfig(
      datasets=("cn_middle_school",), n=2, temperature=0.7, data_dir=str(tmp_path / "data")),
      score_fn=score_fn)
  assert len(_question(sampler.calls[0]["prompts"][0])) > 200  # 5-shot for the sampler
  assert seen == [chat.render([{"role": "system", "content": chat.SYSTEM_PROMPTS["cot"]},
                               {"role": "user", "content": "合成题 A.1 B.2"}],
                              add_generation_prompt=True)]
