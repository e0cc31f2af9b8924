"""Prompts: ChatML shape, CoT/TIR system prompts, few-shot exactly where SPEC says."""

import pytest

from qmath_jax.data import chat
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
  assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * shots + ["user"]
  for answer in messages[2:-1:2]:
    assert "\\boxed{" in answer["content"]
    assert ("```python" in answer["content"]) == (prompt_type == "tir")


def test_chinese_sets_get_chinese_exemplars():
  messages = prompts.build_messages("Q", "cn_middle_school", "cot", choice=True)
  assert "答案是" in messages[2]["content"]
  messages = prompts.build_messages("Q", "aqua", "cot", choice=True)
  assert "The answer is" in messages[2]["content"]


def test_exemplars_are_not_benchmark_text(data_dir):
  exemplar_questions = [q.split("\n")[0] for q, _, _ in
                        prompts._ENGLISH_EXEMPLARS + prompts._CHINESE_EXEMPLARS]
  for name in benchmarks.available(data_dir):
    for problem in benchmarks.load(name, data_dir):
      for q in exemplar_questions:
        assert q not in problem.question, (name, q)
