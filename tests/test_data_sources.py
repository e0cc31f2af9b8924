"""Sources: schema mapping, bad rows, the real data directory, TFDS array_record round trip."""

import json
import os
import stat

import grain
import pytest
import tensorflow_datasets as tfds

from qmath_jax.data import gold
from qmath_jax.data import records
from qmath_jax.data import sources
from qmath_jax.data import tfds_builders


def _write(path, lines):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture
def tiny_data_dir(tmp_path):
  """A data directory with a small synthetic GSM8K-layout file per split (no real text)."""
  for split, n in (("train", 12), ("test", 5)):
    rows = [json.dumps({"question": f"Ann has {i} pens and buys {i + 1} more. How many now?",
                        "answer": f"{i} + {i + 1} = <<{i}+{i + 1}={2 * i + 1}>>{2 * i + 1}\n"
                                  f"#### {2 * i + 1:,}", "idx": i}) for i in range(n)]
    _write(tmp_path / "gsm8k" / f"{split}.jsonl", rows)
  return tmp_path


def test_gsm8k_rows_map_to_schema(tiny_data_dir):
  problems = sources.load("gsm8k/train", tiny_data_dir)
  assert len(problems) == 12
  p = problems[7]
  assert p.id == "gsm8k/train/7" and p.dataset == "gsm8k/train"
  assert p.answer == "15" and p.question.startswith("Ann has 7 pens")
  assert "####" in p.solution and p.choices == ()


def test_bad_rows_are_counted_with_file_and_line(tmp_path):
  good = json.dumps({"question": "q?", "answer": "x\n#### 3", "idx": 0})
  _write(tmp_path / "gsm8k" / "train.jsonl", [
      good,
      "{not json",
      json.dumps({"answer": "#### 1"}),                      # no question
      json.dumps({"question": "q", "answer": "no marker"}),  # malformed answer
      "",
      json.dumps([1, 2]),
      json.dumps({"question": "  ", "answer": "#### 4"}),
      good,
  ])
  bad_rows = records.BadRows()
  problems = sources.load("gsm8k/train", tmp_path, bad_rows=bad_rows)
  assert len(problems) == 2
  assert bad_rows.counts == {"invalid JSON": 1, "missing field": 1, "malformed field": 1,
                             "not a JSON object": 1, "empty question": 1}
  path = tmp_path / "gsm8k" / "train.jsonl"
  assert bad_rows.examples["invalid JSON"] == [f"{path}:2: invalid JSON "
                                               f"(Expecting property name enclosed in double "
                                               f"quotes: line 1 column 2 (char 1))"]
  assert f"{path}:3" in bad_rows.examples["missing field"][0]
  assert "'question'" in bad_rows.examples["missing field"][0]
  assert f"{path}:7" in bad_rows.examples["empty question"][0]
  assert "5 bad rows" in bad_rows.summary()


def test_strict_raises_naming_file_and_line(tmp_path):
  _write(tmp_path / "gsm8k" / "test.jsonl",
         [json.dumps({"question": "q", "answer": "#### 1"}), "oops"])
  with pytest.raises(records.BadRowError, match=r"gsm8k/test\.jsonl:2: invalid JSON"):
    sources.load("gsm8k/test", tmp_path, strict=True)


def test_unknown_source_and_missing_dir(tmp_path):
  with pytest.raises(KeyError, match="unknown source"):
    sources.load("nope/test", tmp_path)
  with pytest.raises(FileNotFoundError):
    sources.load("gsm8k/test", tmp_path / "absent")


def test_converters_for_choice_and_numeric_layouts(tmp_path):
  _write(tmp_path / "mmlu_stem" / "test.jsonl", [json.dumps(
      {"question": "Pick", "type": "t", "choices": ["w", "x", "y", "z"], "answer": 2})])
  _write(tmp_path / "mawps" / "addsub.jsonl", [json.dumps({"input": "3+4?", "target": 7.0})])
  _write(tmp_path / "sat_math" / "test.jsonl", [json.dumps(
      {"id": "9", "question": "Q", "options": "A) $1$ B) 2 C) 3 D) 4", "Answer": "B"})])
  _write(tmp_path / "olympiadbench" / "test.jsonl", [json.dumps(
      {"id": 5, "context": "Ctx.", "question": "Q?", "solution": ["s1", "s2"],
       "final_answer": ["$\\frac{1}{2}$"], "unit": None, "answer_type": "Numerical"})])
  mmlu, = sources.load("mmlu_stem/test", tmp_path)
  assert (mmlu.answer, mmlu.choices) == ("C", ("A. w", "B. x", "C. y", "D. z"))
  assert sources.load("mawps/addsub", tmp_path)[0].answer == "7"
  sat, = sources.load("sat_math/test", tmp_path)
  assert sat.choices == ("A. $1$", "B. 2", "C. 3", "D. 4") and sat.id == "sat_math/test/9"
  oly, = sources.load("olympiadbench/test", tmp_path)
  assert (oly.question, oly.answer, oly.solution) == ("Ctx.\nQ?", "\\frac{1}{2}", "s1\ns2")


def test_last_boxed_is_brace_balanced():
  assert gold.last_boxed("a \\boxed{1} b \\boxed{\\frac{1}{2}} c") == "\\frac{1}{2}"
  assert gold.last_boxed("no box") is None
  assert gold.last_boxed("\\boxed{unclosed") is None


def test_last_boxed_treats_escaped_braces_as_text():
  assert gold.last_boxed("so \\boxed{\\{1, 2\\}}.") == "\\{1, 2\\}"
  assert gold.last_boxed("\\boxed{x \\} y}") == "x \\} y"
  assert gold.last_boxed("\\boxed{\\{} and more") == "\\{"
  assert gold.last_boxed("The result is \\boxed 5 apples") == "5"


def test_strip_dollars_only_around_one_formula():
  assert gold.strip_dollars(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
  assert gold.strip_dollars("$5$;$10$") == "$5$;$10$"
  assert gold.strip_dollars("$\\$ 3040$") == "\\$ 3040"
  assert gold.strip_dollars("$(0, 1)$.") == "$(0, 1)$."


def test_gold_rows_with_an_empty_answer_are_bad_unless_kept(tmp_path):
  _write(tmp_path / "gaokao2023en" / "test.jsonl", [
      json.dumps({"question": "Find $x$.", "answer": "$3$"}),
      json.dumps({"question": "Prove it.", "answer": ""}),
      json.dumps({"question": "Find $y$.", "answer": "$\\frac{1}{2}$"})])
  bad_rows = records.BadRows()
  problems = sources.load("gaokao2023en/test", tmp_path, bad_rows=bad_rows)
  assert [p.answer for p in problems] == ["3", "\\frac{1}{2}"]
  assert bad_rows.counts == {"empty answer": 1}
  assert "test.jsonl:2" in bad_rows.examples["empty answer"][0]
  kept = sources.load("gaokao2023en/test", tmp_path, strict=True, keep_empty_answers=True)
  assert [(p.id, p.answer) for p in kept] == [
      ("gaokao2023en/test/0", "3"), ("gaokao2023en/test/1", ""),
      ("gaokao2023en/test/2", "\\frac{1}{2}")]


def test_one_row_to_problem_and_unknown_dataset():
  problem = sources.to_problem({"Body": "Ann has 3 pens", "Question": "How many?",
                                "Answer": 3.0}, "svamp", row_id=4)
  assert (problem.id, problem.question, problem.answer) == (
      "svamp/4", "Ann has 3 pens. How many?", "3")
  with pytest.raises(KeyError, match="unknown dataset"):
    sources.to_problem({"question": "q", "answer": "1"}, "nope")
  with pytest.raises(gold.MissingFieldError, match="'target'") as raised:
    sources.to_problem({"input": "q"}, "mawps/addsub")
  assert raised.value.field == "target"


def test_every_manifest_file_loads(data_dir):
  expected_rows = {"aime24/test": 30, "gsm8k/train": 7473, "gsm8k/test": 1319, "math/test": 5000,
                   "mmlu_stem/test": 3018, "olympiadbench/test": 675, "mawps/test": 2065,
                   "cmath/test": 600, "svamp/test": 1000, "math500/test": 500}
  for name in sources.SOURCES:
    bad_rows = records.BadRows()
    problems = sources.load(name, data_dir, bad_rows=bad_rows)
    assert problems, name
    assert all(p.question.strip() and p.answer.strip() for p in problems), name
    assert len({p.id for p in problems}) == len(problems), f"{name}: ids not unique"
    if name in expected_rows:
      assert len(problems) + bad_rows.total == expected_rows[name], name
    # The only unusable rows in the shipped files have an empty gold answer.
    assert set(bad_rows.counts) <= {"empty answer"}, (name, bad_rows.summary())


def test_real_gold_answers(data_dir):
  assert sources.load("gsm8k/train", data_dir)[0].answer == "72"
  assert sources.load("mmlu_stem/test", data_dir)[0].answer == "C"
  assert sources.load("olympiadbench/test", data_dir)[0].answer == "2"
  assert sources.load("amc23/test", data_dir)[0].answer == "27"


def test_tfds_array_record_round_trip(tiny_data_dir, tmp_path):
  tfds_dir = tmp_path / "tfds"
  builder = tfds_builders.build("gsm8k", tfds_dir=tfds_dir, data_dir=tiny_data_dir)
  assert builder.info.splits["train"].num_examples == 12
  assert list((tfds_dir / "qmath_problems" / "gsm8k" / "1.0.0").glob("*.array_record*"))
  source = tfds.data_source("qmath_problems/gsm8k", split="test", data_dir=str(tfds_dir))
  read_back = list(grain.MapDataset.source(source).map(tfds_builders.problem_from_example))
  expected = sources.load("gsm8k/test", tiny_data_dir)
  assert sorted(read_back, key=lambda p: p.id) == sorted(expected, key=lambda p: p.id)


def test_problem_jsonl_round_trip(tmp_path):
  problems = [sources.Problem(id="x/1", dataset="x", question="q", answer="1", solution="s",
                              choices=("A. a",), meta={"k": 1})]
  sources.write_jsonl(problems, tmp_path / "p.jsonl")
  assert sources.load_jsonl_problems(tmp_path / "p.jsonl") == problems
  assert not (tmp_path / "p.jsonl.tmp").exists()


def test_write_atomic_keeps_the_old_file_when_writing_fails(tmp_path):
  path = tmp_path / "out" / "rows.jsonl"
  records.write_jsonl([{"q": "数"}, {"q": 2}], path)
  assert path.read_text(encoding="utf-8") == '{"q": "数"}\n{"q": 2}\n'
  with pytest.raises(UnicodeEncodeError):
    records.write_atomic(path, "half\ud800")   # a lone surrogate cannot be UTF-8
  assert path.read_text(encoding="utf-8") == '{"q": "数"}\n{"q": 2}\n'
  assert sorted(p.name for p in path.parent.iterdir()) == ["rows.jsonl"]


def test_atomic_outputs_get_the_umask_mode_not_a_private_one(tmp_path):
  old_umask = os.umask(0o027)
  try:
    records.write_atomic(tmp_path / "report.json", "{}")
    written = records.temp_dir_beside(tmp_path / "export")
  finally:
    os.umask(old_umask)
  assert stat.S_IMODE((tmp_path / "report.json").stat().st_mode) == 0o640  # not mkstemp's 0600
  assert stat.S_IMODE(written.stat().st_mode) == 0o750  # not mkdtemp's 0700
  assert written.parent == tmp_path and written.name.startswith(".export.tmp-")


def test_problem_jsonl_bad_rows_name_file_line_and_field(tmp_path):
  good = {"id": "x/0", "dataset": "x", "question": "q", "answer": "1"}
  rows = [good,
          {**good, "id": "x/1", "answer": None},        # no gold answer: "", not "None"
          {**good, "id": "x/2", "choices": 5},
          {**good, "id": "x/3", "question": 7},
          {**good, "id": "x/4", "meta": [1, 2]},
          {**good, "id": "x/5", "solution": ["s"]},
          {**good, "id": "x/6", "answer": {"value": 1}},
          {**good, "id": "x/7", "choices": ["A. 1", 2]},
          {**good, "id": "x/8", "answer": 12}]
  path = tmp_path / "p.jsonl"
  _write(path, [json.dumps(row) for row in rows])
  bad_rows = records.BadRows()
  problems = sources.load_jsonl_problems(path, bad_rows=bad_rows)
  assert [(p.id, p.answer) for p in problems] == [("x/0", "1"), ("x/1", ""), ("x/8", "12")]
  assert bad_rows.counts == {"malformed field": 6}
  examples = bad_rows.examples["malformed field"]
  for line, field in zip((3, 4, 5, 6, 7), ("choices", "question", "meta", "solution", "answer")):
    assert examples[line - 3].startswith(f"{path}:{line}: malformed field") and field in (
        examples[line - 3]), examples[line - 3]
  with pytest.raises(records.BadRowError, match=rf"p\.jsonl:3: malformed field.*'choices'"):
    sources.load_jsonl_problems(path, strict=True)


def test_invalid_utf8_is_a_bad_row_at_its_line(tmp_path):
  path = tmp_path / "rows.jsonl"
  path.write_bytes(b'{"q": "a"}\n{"q": "\xff\xfe"}\n{"q": "\xc3\xa9"}\n')
  bad_rows = records.BadRows()
  assert list(records.read_jsonl(path, bad_rows)) == [(1, {"q": "a"}), (3, {"q": "é"})]
  assert bad_rows.counts == {"invalid UTF-8": 1}
  assert bad_rows.examples["invalid UTF-8"][0].startswith(f"{path}:2: invalid UTF-8")
  with pytest.raises(records.BadRowError, match=r"rows\.jsonl:2: invalid UTF-8"):
    list(records.read_jsonl(path, records.BadRows(strict=True)))
