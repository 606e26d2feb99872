"""check_value: one wording for every bad setting, "<where> must be <what>, got <value>", and the
value returned as the setting holds it."""

from typing import Any, Literal

import pytest

from infosft.checks import Number, check_keys, check_value


@pytest.mark.parametrize(
    ("expected", "value", "message"),
    [
        (Number(whole=True, low=1), 0, "n must be a positive whole number, got 0"),
        (
            Number(whole=True, low=1, unit="steps"),
            2.5,
            "n must be a positive whole number of steps, got 2.5",
        ),
        (Number(whole=True, low=0), -1, "n must be a whole number >= 0, got -1"),
        (Number(low=0), -0.5, "n must be a finite number >= 0, got -0.5"),
        (Number(low=0), float("inf"), "n must be a finite number >= 0, got inf"),
        (Number(low=0), float("nan"), "n must be a finite number >= 0, got nan"),
        (Number(low=0, low_open=True), 0, "n must be a positive finite number, got 0"),
        (Number(low=0, low_open=True, high=1), 1.5, "n must be a finite number in (0, 1], got 1.5"),
        (Number(low=0, high=1, high_open=True), 1, "n must be a finite number in [0, 1), got 1"),
        (Number(low=0), True, "n must be a finite number >= 0, got True"),
        (Number(low=0), "1", "n must be a finite number >= 0, got '1'"),
        (int, 1.5, "n must be a whole number, got 1.5"),
        (float, "x", "n must be a number (finite), got 'x'"),
        (str, 3, "n must be a string, got 3"),
        (dict, [1], "n must be a mapping, got [1]"),
        (int | None, "x", "n must be a whole number or null, got 'x'"),
        (Literal["current", "base"], "cur", "n must be one of current, base, got 'cur'"),
    ],
)
def test_a_value_that_does_not_fit_names_the_setting_what_it_must_be_and_the_value(
    expected, value, message
):
    with pytest.raises(ValueError) as error:
        check_value(value, expected, "n")
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("expected", "value", "held"),
    [
        (Number(whole=True, low=1), 2.0, 2),
        (Number(low=0), 1, 1.0),
        (Number(low=0, low_open=True, high=1), 1, 1.0),
        (Number(whole=True, low=0), 10**400, 10**400),
        (int, 3.0, 3),
        (float, 1, 1),
        (int | None, None, None),
        (Any, object, object),
        (Literal["current", "base"], "base", "base"),
    ],
)
def test_a_value_that_fits_is_returned_as_the_setting_holds_it(expected, value, held):
    result = check_value(value, expected, "n")
    assert result == held and type(result) is type(held)


def test_null_is_allowed_only_when_asked_and_then_says_what_it_means():
    assert check_value(None, Number(whole=True, low=1), "n", null=True) is None
    with pytest.raises(ValueError, match=r"^n must be a positive whole number, got None$"):
        check_value(None, Number(whole=True, low=1), "n")
    with pytest.raises(ValueError, match=r"number of items \(or null for all\), got 0$"):
        check_value(0, Number(whole=True, low=1, unit="items"), "n", null="for all")


def test_a_reason_is_appended_and_yaml_11_booleans_are_explained():
    with pytest.raises(ValueError, match=r"got 0 \(or -1 to train num_train_epochs\)$"):
        check_value(0, Number(whole=True, low=1), "n", why="or -1 to train num_train_epochs")
    with pytest.raises(ValueError, match=r"true or false, got 'yes' \(YAML 1.2 reads yes/no/on/"):
        check_value("yes", bool, "n")


def test_unknown_keys_are_named_with_the_nearest_allowed_ones():
    with pytest.raises(ValueError, match=r"unknown key in lora: 'rnak' \(did you mean rank\?\)"):
        check_keys(["rank", "rnak"], "lora", ["rank", "alpha"])
    check_keys(["rank"], "lora", ["rank", "alpha"])
