"""Row formatters: synthetic rows shaped like the real public datasets -> TRL standard rows."""

import pytest

from infosft.training import formats
from infosft.training.formats import (
    MATH_SYSTEM_PROMPT,
    available_formatters,
    best_ultrafeedback_completion,
    explode_toolalpaca,
    get_formatter,
    get_row_filter,
    is_code_prompt,
    register_formatter,
    token_length_filter,
)

PAPER_SYSTEM_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."


def numina_row():
    problem, solution = "Compute $2+3$.", "We add: $2+3=5$. The answer is $\\boxed{5}$."
    return {
        "source": "synthetic_math",
        "problem": problem,
        "solution": solution,
        "messages": [
            {"role": "user", "content": problem},
            {"role": "assistant", "content": solution},
        ],
    }


def uf_completion(response, instruction_following, helpfulness, overall):
    def aspect(rating):
        return {"Rating": rating, "Rationale": "...", "Type": ["1"], "Rationale For Rating": ""}

    return {
        "annotations": {
            "helpfulness": aspect(helpfulness),
            "honesty": aspect("5"),
            "instruction_following": aspect(instruction_following),
            "truthfulness": aspect("5"),
        },
        "critique": "...",
        "custom_system_prompt": "",
        "fine-grained_score": 4.0,
        "model": "some-model",
        "overall_score": overall,
        "principle": "helpfulness",
        "response": response,
    }


def ultrafeedback_row(instruction="Write a Python function that reverses a list."):
    return {
        "source": "evol_instruct",
        "instruction": instruction,
        "models": ["a", "b", "c", "d"],
        "completions": [
            uf_completion("best overall_score only", "2", "2", 9.0),
            uf_completion("best instruction_following alone", "5", "1", 5.0),
            uf_completion("best sum of the two", "4", "4", 6.0),
            uf_completion("unrated", "N/A", "5", 7.0),
        ],
        "correct_answers": ["None"],
        "incorrect_answers": ["None"],
    }


def openr1_row(with_messages=True):
    row = {
        "problem": "Find x if 2x = 6.",
        "solution": "x = 3",
        "answer": "3",
        "problem_type": "Algebra",
        "question_type": "math-word-problem",
        "source": "olympiads",
        "uuid": "0000",
        "is_reasoning_complete": [True, True],
        "generations": ["<think>wrong</think> x = 4", "<think>2x=6 so x=3</think> \\boxed{3}"],
        "correctness_math_verify": [False, True],
        "correctness_llama": None,
        "finish_reasons": None,
        "correctness_count": 1,
        "messages": [],
    }
    if with_messages:
        row["messages"] = [
            {"role": "user", "content": row["problem"]},
            {"role": "assistant", "content": "<think>chosen trace</think> \\boxed{3}"},
        ]
    return row


def sciq_row():
    return {
        "question": "What gas do plants absorb during photosynthesis?",
        "distractor3": "helium",
        "distractor1": "oxygen",
        "distractor2": "nitrogen",
        "correct_answer": "carbon dioxide",
        "support": "Plants take in carbon dioxide and release oxygen.",
    }


def toolalpaca_api():
    react = 'Thought: I need the weather.\nAction: getWeather\nAction Input: {"city": "Paris"}'
    return {
        "Name": "WeatherAPI",
        "Description": "weather",
        "Category": "Weather",
        "NLDocumentation": "getWeather: returns the weather of a city. Parameters: city.",
        "Instances": [
            {
                "input": "What is the weather in Paris?\nHint: use getWeather",
                "output": "It is sunny in Paris.",
                "Final Thought": "I have the weather.",
                "intermediate_steps": [
                    [["getWeather", '{"city": "Paris"}', react], '{"weather": "sunny"}']
                ],
            },
            {
                "input": "And in Rome?",
                "output": "Rainy.",
                "Final Thought": "Done.",
                "intermediate_steps": [],
            },
        ],
    }


def test_the_five_paper_datasets_are_registered():
    assert {"numina_math_cot", "openr1_math", "ultrafeedback_code", "sciq", "toolalpaca"} <= set(
        available_formatters()
    )


def test_unknown_format_error_lists_the_known_ones():
    with pytest.raises(ValueError, match="numina_math_cot"):
        get_formatter("no_such_format")


def test_registering_a_name_twice_needs_overwrite(monkeypatch):
    monkeypatch.setattr(formats, "_FORMATTERS", dict(formats._FORMATTERS))
    register_formatter("test_identity", dict, overwrite=True)
    with pytest.raises(ValueError, match="already registered"):
        register_formatter("test_identity", dict)
    assert get_formatter("test_identity")({"a": 1}) == {"a": 1}


def test_numina_adds_the_paper_system_prompt():
    assert MATH_SYSTEM_PROMPT == PAPER_SYSTEM_PROMPT
    out = get_formatter("numina_math_cot")(numina_row())
    assert out == {
        "prompt": [
            {"role": "system", "content": PAPER_SYSTEM_PROMPT},
            {"role": "user", "content": "Compute $2+3$."},
        ],
        "completion": [{"role": "assistant", "content": numina_row()["solution"]}],
    }


def test_numina_falls_back_to_messages():
    row = {"messages": numina_row()["messages"]}
    assert get_formatter("numina_math_cot")(row) == get_formatter("numina_math_cot")(numina_row())


def test_numina_row_without_fields_names_the_missing_column():
    with pytest.raises(ValueError, match="messages"):
        get_formatter("numina_math_cot")({"question": "?"})


def test_ultrafeedback_picks_the_highest_instruction_following_plus_helpfulness():
    assert best_ultrafeedback_completion(ultrafeedback_row()) == "best sum of the two"
    out = get_formatter("ultrafeedback_code")(ultrafeedback_row())
    assert out["prompt"] == [{"role": "user", "content": ultrafeedback_row()["instruction"]}]
    assert out["completion"] == [{"role": "assistant", "content": "best sum of the two"}]


def test_ultrafeedback_row_without_rated_completion_is_filtered_and_rejected():
    row = ultrafeedback_row()
    row["completions"] = [uf_completion("x", "N/A", "3", 5.0)]
    assert get_row_filter("ultrafeedback_code")(row) is False
    with pytest.raises(ValueError, match="rated"):
        get_formatter("ultrafeedback_code")(row)


@pytest.mark.parametrize(
    ("instruction", "is_code"),
    [
        ("Write a Python function that sorts a list.", True),
        ("How do I write a SQL query joining two tables?", True),
        ("Implement quicksort in C++.", True),
        ("Classify this sentence as positive or negative.", False),
        ("Encode your feelings in a poem about autumn.", False),
        ("What is the capital of France?", False),
    ],
)
def test_code_keyword_filter(instruction, is_code):
    assert is_code_prompt({"instruction": instruction}) is is_code


def test_openr1_prefers_the_datasets_own_message():
    out = get_formatter("openr1_math")(openr1_row())
    assert out["prompt"][0] == {"role": "system", "content": PAPER_SYSTEM_PROMPT}
    assert out["prompt"][1] == {"role": "user", "content": "Find x if 2x = 6."}
    assert out["completion"][0]["content"] == "<think>chosen trace</think> \\boxed{3}"


def test_openr1_without_messages_takes_the_first_verified_generation():
    out = get_formatter("openr1_math")(openr1_row(with_messages=False))
    assert out["completion"][0]["content"] == "<think>2x=6 so x=3</think> \\boxed{3}"


def test_sciq_lists_each_option_once_and_answers_with_the_correct_letter():
    row = sciq_row()
    out = get_formatter("sciq")(row)
    prompt = out["prompt"][0]["content"]
    options = {line[0]: line[3:] for line in prompt.splitlines() if line[1:3] == ". "}
    assert sorted(options.values()) == sorted(
        [row["correct_answer"], row["distractor1"], row["distractor2"], row["distractor3"]]
    )
    answer = out["completion"][0]["content"]
    letter = answer.removeprefix("The answer is ")[0]
    assert options[letter] == "carbon dioxide"
    assert get_formatter("sciq")(row) == out  # deterministic option order


def test_toolalpaca_explodes_one_row_per_instance():
    rows = explode_toolalpaca([toolalpaca_api(), {"Name": "Empty"}])
    assert [r["output"] for r in rows] == ["It is sunny in Paris.", "Rainy."]
    assert all(r["NLDocumentation"].startswith("getWeather") for r in rows)


def test_toolalpaca_turns_alternate_and_end_with_the_answer():
    row = explode_toolalpaca([toolalpaca_api()])[0]
    messages = get_formatter("toolalpaca")(row)["messages"]
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant"]
    assert "getWeather: returns" in messages[0]["content"]
    assert messages[1]["content"] == "What is the weather in Paris?"  # the hint is stripped
    assert messages[2]["content"].startswith("Thought: I need the weather.")
    assert messages[3]["content"] == 'Observation: {"weather": "sunny"}'
    assert messages[4]["content"].endswith("It is sunny in Paris.")


def test_every_formatted_row_renders_with_a_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    raw = {
        "numina_math_cot": numina_row(),
        "openr1_math": openr1_row(),
        "ultrafeedback_code": ultrafeedback_row(),
        "sciq": sciq_row(),
        "toolalpaca": explode_toolalpaca([toolalpaca_api()])[0],
    }
    for name, row in raw.items():
        out = get_formatter(name)(row)
        messages = out.get("messages") or out["prompt"] + out["completion"]
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        assert messages[-1]["content"] in text, name


def test_length_filter_keeps_rows_strictly_under_the_limit(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    row = get_formatter("numina_math_cot")(numina_row())
    ids = tokenizer.apply_chat_template(row["prompt"] + row["completion"], tokenize=True)
    length = len(ids["input_ids"] if hasattr(ids, "keys") else ids)
    assert token_length_filter(tokenizer, length + 1)(row) is True
    assert token_length_filter(tokenizer, length)(row) is False


def test_exploded_toolalpaca_rows_fit_in_an_arrow_dataset():
    from datasets import Dataset

    dataset = Dataset.from_list(explode_toolalpaca([toolalpaca_api()]))
    formatted = dataset.map(get_formatter("toolalpaca"), remove_columns=dataset.column_names)
    assert formatted[0]["messages"][3]["content"] == 'Observation: {"weather": "sunny"}'
    assert len(formatted[1]["messages"]) == 3  # no tool step: system, user, final answer
