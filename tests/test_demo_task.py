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


def test_every_word_problem_solution_is_correct_and_states_the_answer():
    from infosft.experiments.word_problems import WORD_PROBLEMS

    times = re.compile(r"has (\d+) bags with (\d+) (\w+) in each bag")
    shares = re.compile(r"shares (\d+) (\w+) equally among (\d+) friends")
    for problem in WORD_PROBLEMS.generate(300, seed=2):
        if match := times.search(problem.question):
            a, b, _ = match.groups()
            expected = int(a) * int(b)
            assert f"{a} × {b} = {expected}" in problem.solution
        else:
            total, _, a = shares.search(problem.question).groups()
            expected = int(total) // int(a)
            assert int(a) * expected == int(total)
            assert f"{total} ÷ {a} = {expected}" in problem.solution
        assert problem.answer == expected
        assert problem.solution.endswith(f"The answer is {expected}.")


def test_word_problem_held_out_keys_never_appear_in_training_for_any_seed():
    from infosft.experiments.word_problems import WORD_PROBLEMS

    test = WORD_PROBLEMS.held_out(100)
    assert len(test) == 100
    for seed in range(3):
        train, same_test = WORD_PROBLEMS.split(400, 100, seed=seed)
        assert same_test == test
        assert len({p.key for p in train}) == 400
        assert not {p.key for p in train} & {p.key for p in test}


def test_word_problem_demonstrations_are_short():
    from infosft.experiments.word_problems import WORD_PROBLEMS

    longest = max(len(p.solution.split()) for p in WORD_PROBLEMS.generate(200, seed=0))
    assert longest <= 25  # about 30 tokens: a fine-tune step stays cheap on a CPU


def test_a_task_asked_for_more_distinct_problems_than_exist_says_so():
    import pytest

    from infosft.experiments.generated import GeneratedTask, Problem

    coin = GeneratedTask("coin", "Flip.", lambda rng: Problem(str(rng.randint(0, 1)), "", 0))
    with pytest.raises(ValueError, match="cannot draw 3 distinct coin problems"):
        coin.generate(3, seed=0)


def test_both_generated_tasks_are_registered_and_scored_on_the_final_number():
    import infosft.experiments  # noqa: F401
    from infosft.evaluation import load_task, score_samples

    task = load_task("word_problems")
    assert len(task.items) == 100 and task.scorer == "math"
    item = task.items[0]
    samples = [
        {"task_id": item["id"], "completion": f"Some working.\n#### {item['answer']}"},
        {"task_id": item["id"], "completion": f"The answer is {int(item['answer']) + 1}."},
    ]
    assert [r["passed"] for r in score_samples(task, samples, progress=False)] == [True, False]


def test_there_are_enough_distinct_probes_for_200_retention_items():
    # The embedded base answers about half of them (259 of 527).
    assert len({p.question for p in probes.PROBES}) == len(probes.PROBES) >= 450


def test_new_probes_come_after_the_original_186_so_their_ids_stay():
    assert probes.PROBES[0].question == "What is the capital of France?"
    assert probes.PROBES[185].question == "What is a young frog called?"
    assert probes.PROBES[186].question == "What is the capital of Switzerland?"


def test_no_probe_gives_its_answer_away_in_the_question():
    for probe in probes.PROBES:
        for answer in probe.answers:
            assert not probes.probe_passed(probe.question, probes.Probe("", (answer,))), probe
