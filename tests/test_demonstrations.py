"""Regimes from a task's own demonstrations: noisy answers and the model's own answers."""

import re

import pytest

from infosft.experiments.demonstrations import corrupt, near_policy, split_row, with_answer


def conversational(i):
    return {
        "prompt": [{"role": "user", "content": f"What is {i} + {i}?"}],
        "completion": [{"role": "assistant", "content": f"{i} + {i} = {2 * i}. #### {2 * i}"}],
    }


def plain(i):
    return {"prompt": f"What is {i} + {i}?", "completion": f"The answer is {2 * i}."}


def messages(i):
    return {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {i} + {i}?"},
            {"role": "assistant", "content": f"{2 * i}"},
        ]
    }


@pytest.mark.parametrize("make", [conversational, plain, messages])
def test_a_quarter_of_the_answers_get_a_wrong_final_number_and_the_rest_stay(make):
    rows = [make(i) for i in range(10, 50)]
    noisy, changed = corrupt(rows, share=0.25, seed=0)
    assert len(changed) == 10 and len(noisy) == 40
    for index, (before, after) in enumerate(zip(rows, noisy, strict=True)):
        if index not in changed:
            assert after == before
            continue
        old, new = split_row(before)[1], split_row(after)[1]
        right = re.findall(r"\d+", old)[-1]
        wrong = re.findall(r"\d+", new)[-1]
        assert wrong != right
        # Every occurrence of the answer changed alike: a slip, not a second answer.
        assert new == old.replace(right, wrong)
        assert split_row(after)[0] == split_row(before)[0]


def test_corruption_is_chosen_by_the_seed():
    rows = [conversational(i) for i in range(20)]
    assert corrupt(rows, share=0.5, seed=3) == corrupt(rows, share=0.5, seed=3)
    assert corrupt(rows, share=0.5, seed=3)[1] != corrupt(rows, share=0.5, seed=4)[1]


def test_swap_pastes_another_rows_different_answer():
    rows = [plain(i) for i in range(12)]
    answers = {split_row(r)[1] for r in rows}
    noisy, changed = corrupt(rows, share=0.5, seed=1, how="swap")
    for index in changed:
        new = split_row(noisy[index])[1]
        assert new in answers and new != split_row(rows[index])[1]


def test_share_zero_changes_nothing_and_share_one_changes_every_row():
    rows = [plain(i) for i in range(8)]
    assert corrupt(rows, share=0.0, seed=0) == (rows, [])
    assert corrupt(rows, share=1.0, seed=0)[1] == list(range(8))


@pytest.mark.parametrize("share", [-0.1, 1.5, "a", True, float("nan")])
def test_a_share_outside_zero_to_one_is_refused(share):
    with pytest.raises(ValueError, match="share of corrupted answers"):
        corrupt([plain(1)], share=share, seed=0)


def test_an_unknown_corruption_and_an_answer_without_a_number_are_refused_by_name():
    with pytest.raises(ValueError, match="corruption must be one of"):
        corrupt([plain(1)], share=1.0, seed=0, how="typo")
    rows = [{"prompt": "Name a colour.", "completion": "Blue."}]
    with pytest.raises(ValueError, match=r"row 0 has no number.*'swap'"):
        corrupt(rows, share=1.0, seed=0)


def test_near_policy_keeps_the_first_accepted_sample_and_drops_prompts_without_one():
    rows = [conversational(i) for i in (1, 2, 3)]
    samples = {
        "What is 1 + 1?": ["3", "It is 2.", "2"],
        "What is 2 + 2?": ["5", "six"],
        "What is 3 + 3?": ["6"],
    }

    def sample(prompts):
        return [samples[p[-1]["content"]] for p in prompts]

    def accept(row, completion):
        right = split_row(row)[1].split()[-1]
        return re.findall(r"\d+", completion)[-1:] == [right]

    kept, counts = near_policy(rows, sample, accept)
    assert [split_row(r)[1] for r in kept] == ["It is 2.", "6"]
    assert [split_row(r)[0] for r in kept] == [split_row(rows[0])[0], split_row(rows[2])[0]]
    assert counts == {"rows": 3, "kept": 2, "samples": 6, "accepted": 3}


def test_with_answer_leaves_the_original_row_untouched():
    row = messages(4)
    new = with_answer(row, "nine")
    assert split_row(new)[1] == "nine" and split_row(row)[1] == "8"


def test_a_row_without_an_assistant_answer_is_refused():
    with pytest.raises(ValueError, match="'messages' or 'prompt' and 'completion'"):
        split_row({"text": "hello"})
    with pytest.raises(ValueError, match="end with the assistant"):
        split_row({"messages": [{"role": "user", "content": "hi"}]})
