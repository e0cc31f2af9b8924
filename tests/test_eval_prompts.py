"""Prompts: ChatML shape, CoT/TIR system prompts, few-shot exactly where SPEC says."""

import pytest

from qmath_jax.data import chat
from qmath_jax.data import sources
from qmath_jax.evaluation import benchmarks
from qmath_jax.evaluation import prompts


def test_cot_prompt_is_chatml_with_the_spec_system_prompt():
  text = prompts.build_prompt("What is 1+1?", "gsm8k", "cot")
  assert text == (
      "<|im_start|>system\nPlease reason step by step, and put your final answer within "
      "\\boxed{}.<|im_end|>\n<|im_start|>user\nWhat is 1+1?<|im_end|>\n<|im_start|>assistant\n")


def test_tir_prompt_uses_the_tir_system_prompt():
  text = prompts.build_prompt("What is 1+1?", "math", "tir")
  assert text.startswith(chat.render_turn("system", chat.TIR_SYSTEM))
  assert "integrate natural language reasoning with programs" in text


def test_unknown_prompt_type_is_rejected():
  with pytest.raises(ValueError, match="prompt_type"):
    prompts.build_prompt("Q", "math", "direct")


@pytest.mark.parametrize("name,choice,shots", [
    ("aqua", True, 5), ("sat_math", True, 5), ("mmlu_stem", True, 5),
    ("gaokao2024_I", True, 5), ("gaokao2024_I", False, 0), ("cn_middle_school", True, 5),
    ("cn_middle_school", False, 0), ("gaokao2024_mix", True, 5), ("gaokao_math_qa", True, 5),
    ("math", False, 0), ("gsm8k", False, 0), ("gaokao2023en", False, 0), ("cmath", False, 0),
])
@pytest.mark.parametrize("prompt_type", ["cot", "tir"])
def test_few_shot_only_for_choice_sets(name, choice, shots, prompt_type):
  messages = prompts.build_messages("Q", name, prompt_type, choice)
  assert [m["role"] for m in messages] == ["system", "user"]
  parts = messages[1]["content"].split(prompts.SHOT_SEPARATOR)
  assert parts[-1] == "Q"
  exemplars = [part for part in parts if "\\boxed{" in part]
  assert len(exemplars) == shots
  for exemplar in exemplars:
    assert ("```python" in exemplar) == (prompt_type == "tir")


def test_exemplars_share_the_user_turn_with_the_question():
  """Qwen's qwen25-math-cot puts "q\na" exemplars, "\n\n"-joined, before the question."""
  messages = prompts.build_messages("Q", "aqua", "cot", True)
  q, cot, _ = prompts._ENGLISH_EXEMPLARS[0]
  assert messages[1]["content"].startswith(f"{q}\n{cot}\n\n")
  assert messages[1]["content"].endswith(f"{prompts._ENGLISH_EXEMPLARS[4][1]}\n\nQ")


@pytest.mark.parametrize("answer,shots", [("B", True), ("ABD", False), ("12", False)])
def test_chinese_sets_are_few_shot_only_for_a_single_letter_gold(answer, shots):
  """Qwen's adapt_few_shot: 5-shot only when the gold is one of A-E; "ABD" is zero-shot."""
  for name in ("gaokao2024_I", "gaokao_math_qa"):
    messages = prompts.build_messages("Q", name, "cot", choice=True, answer=answer)
    assert (messages[1]["content"] != "Q") == shots
  assert prompts.uses_few_shot("aqua", True, answer="AB")


def _source_problem(row, name):
  return sources.to_problem(row, name)


def test_gaokao_math_qa_options_are_labelled_as_qwen_does():
  row = {"question": "问题", "options": {"A": "1", "B": "2"}, "label": "B"}
  problem = _source_problem(row, "gaokao_math_qa")
  want = "问题\n选项: (A) 1 (B) 2"
  assert prompts.question_text(problem) == want
  assert prompts.question_text(problem, row) == want


def test_aqua_options_keep_qwens_spacing():
  row = {"question": "Q?", "options": ["A)1(2)", "B)3"], "correct": "A"}
  problem = _source_problem(row, "aqua")
  assert prompts.question_text(problem, row) == "Q?\nAnswer Choices: (A) 1 (2)  (B) 3"


@pytest.mark.parametrize("options,want", [
    ("A) 1 B) 2 C) 3 D) 4", "(A) 1 (B) 2 (C) 3 (D) 4"),
    # A layout the option splitter does not read: the options must still be shown.
    ("A. 1 B. 2 C. 3 D. 4", "(A. 1 B. 2 C. 3 D. 4"),
])
def test_sat_math_options_are_always_shown(options, want):
  row = {"question": "Q?", "options": options, "Answer": "B"}
  problem = _source_problem(row, "sat_math")
  assert prompts.question_text(problem, row) == f"Q?\nAnswer Choices: {want}"


def test_mmlu_stem_options_from_the_row():
  row = {"question": " Q? ", "choices": ["x ", "y", "z", "w"], "answer": 1}
  problem = _source_problem(row, "mmlu_stem")
  want = "Q?\nAnswer Choices: (A) x (B) y (C) z (D) w"
  assert prompts.question_text(problem, row) == want == prompts.question_text(problem)


@pytest.mark.parametrize("answer,hint", [
    ("Yes", " (Yes or No)"), ("No.", " (Yes or No)"), ("$\\text{True}$", " (True or False)"),
    ("false", " (True or False)"), ("No solution", ""), ("12", ""),
])
def test_yes_no_golds_get_qwens_hint(answer, hint):
  problem = _source_problem({"question": "Is it?", "answer": answer}, "college_math")
  assert prompts.question_text(problem) == "Is it?" + hint


def test_benchmark_questions_use_the_raw_rows(data_dir):
  for name in ("sat_math", "aqua"):
    if name not in benchmarks.available(data_dir):
      continue
    for problem in benchmarks.load(name, data_dir):
      assert "\nAnswer Choices: (" in problem.question, (name, problem.index)


def test_chinese_sets_get_chinese_exemplars():
  messages = prompts.build_messages("Q", "cn_middle_school", "cot", choice=True)
  assert "答案是" in messages[1]["content"]
  messages = prompts.build_messages("Q", "aqua", "cot", choice=True)
  assert "The answer is" in messages[1]["content"]


def test_exemplars_are_not_benchmark_text(data_dir):
  exemplar_questions = [q.split("\n")[0] for q, _, _ in
                        prompts._ENGLISH_EXEMPLARS + prompts._CHINESE_EXEMPLARS]
  for name in benchmarks.available(data_dir):
    for problem in benchmarks.load(name, data_dir):
      for q in exemplar_questions:
        assert q not in problem.question, (name, q)
