"""The demo's built-in task and probes: correct worked solutions, disjoint splits, scoring."""

import re

from infosft.experiments import arith_task, probes

LINE = re.compile(r"^(\d+) ([+*-]) (\d+) = (\d+)$")
OPS = {"add": "+", "subtract": "-", "multiply by": "*"}


def test_every_solution_line_is_correct_arithmetic_and_follows_the_question():
    for problem in arith_task.generate_problems(200, seed=3):
        *steps, final = problem.solution.split("\n")
        start = int(re.match(r"Start with (\d+), ", problem.question).group(1))
        asked = re.findall(r"(add|subtract|multiply by) (\d+)", problem.question)
        value = start
        assert len(steps) == len(asked) == 3
        for line, (word, operand) in zip(steps, asked, strict=True):
            left, symbol, right, result = LINE.match(line).groups()
            assert (int(left), symbol, int(right)) == (value, OPS[word], int(operand))
            expected = {"+": value + int(right), "-": value - int(right), "*": value * int(right)}
            value = expected[symbol]
            assert int(result) == value
            assert 0 <= value <= 200
        assert final == f"The answer is {value}."
        assert problem.answer == value


def test_generated_questions_are_distinct_and_reproducible():
    first = arith_task.generate_problems(100, seed=7)
    assert len({p.question for p in first}) == 100
    assert first == arith_task.generate_problems(100, seed=7)
    assert first != arith_task.generate_problems(100, seed=8)


def test_held_out_problems_never_appear_in_training_and_do_not_depend_on_its_size():
    train, test = arith_task.train_test_split(300, 50, seed=0)
    assert not {p.question for p in train} & {p.question for p in test}
    _, same_test = arith_task.train_test_split(10, 50, seed=0)
    assert test == same_test


def test_sft_example_is_conversational_prompt_completion_with_the_solution_as_target():
    problem = arith_task.generate_problems(1, seed=0)[0]
    example = arith_task.to_sft_example(problem)
    assert [m["role"] for m in example["prompt"]] == ["system", "user"]
    assert example["prompt"][1]["content"] == problem.question
    assert example["completion"] == [{"role": "assistant", "content": problem.solution}]


def test_evaluation_task_scores_the_final_number_only():
    from infosft.evaluation import score_samples

    problem = arith_task.generate_problems(1, seed=1)[0]
    task = arith_task.evaluation_task([problem])
    item_id = task.items[0]["id"]
    completions = [
        problem.solution,
        f"Let me think. It is {problem.answer}",
        f"The answer is {problem.answer + 1}.",
        "I do not know.",
    ]
    samples = [{"task_id": item_id, "completion": c} for c in completions]
    passed = [r["passed"] for r in score_samples(task, samples, progress=False)]
    assert passed == [True, True, False, False]


def test_importing_experiments_registers_the_task_with_the_evaluation_registry():
    import infosft.experiments  # noqa: F401
    from infosft.evaluation import load_task

    task = load_task(arith_task.TASK_NAME)
    assert len(task.items) == 100
    assert task.scorer == "math"


def test_probe_answers_match_whole_words_ignoring_case():
    probe = probes.Probe("What is the capital of France?", ("Paris",))
    assert probes.probe_passed("The capital of France is paris.", probe)
    assert not probes.probe_passed("It is a Parisian city.", probe)
    assert not probes.probe_passed("Lyon", probe)


def test_every_probe_has_a_question_and_an_answer():
    assert len({p.question for p in probes.PROBES}) == len(probes.PROBES) >= 40
    assert all(p.answers and all(a.strip() for a in p.answers) for p in probes.PROBES)
