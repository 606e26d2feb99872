"""``infosft weights``: each scheme's curve where w is a function of q, and which are not."""

import math

import pytest

from infosft.cli import main


def table(output: str) -> dict[str, dict[float, float]]:
    """The printed table as {method: {q: w}}."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:1] == ["q"])
    methods = lines[header].split()[1:]
    rows = {}
    for line in lines[header + 1 :]:
        cells = line.split()
        try:
            values = [float(c) for c in cells]
        except ValueError:
            break
        rows[values[0]] = dict(zip(methods, values[1:], strict=True))
    return {m: {q: row[m] for q, row in rows.items()} for m in methods}


def test_curves_of_the_schemes_that_are_functions_of_q(capsys):
    assert main(["weights", "--q", "0.1", "0.7", "--method-arg", "power.k=2"]) == 0
    curves = table(capsys.readouterr().out)
    assert set(curves) == {"nll", "dft", "infosft", "memft", "dft_mix", "power"}
    c = math.log(0.93 / 0.07)
    for q in (0.1, 0.7):
        expected = {
            "nll": 1.0,
            "dft": q,
            "infosft": q * max(0.0, 1 - math.log(q / (1 - q)) / c),
            "memft": 1.0 if -math.log(q) > math.log(2) else 0.0,
            "dft_mix": 0.7 * q + 0.3,
            "power": 2 * q**2,
        }
        for method, w in expected.items():
            assert curves[method][q] == pytest.approx(w, abs=1e-4), method


def test_schemes_without_a_curve_are_named_with_what_they_read(capsys):
    assert main(["weights", "--methods", "eaft", "talr", "nll"]) == 0
    out = capsys.readouterr().out
    assert set(table(out)) == {"nll"}
    assert "eaft: no curve" in out and "top-20 entropy" in out
    assert "talr: no curve" in out and "micro-batch statistic" in out


@pytest.mark.parametrize(
    ("flag", "message"),
    [("power.k", "METHOD.NAME=VALUE"), ("power.k=x", "not a number"), ("eaft.alpha=1", "eaft")],
)
def test_a_bad_method_arg_is_a_one_line_error(capsys, flag, message):
    assert main(["weights", "--methods", "power", "--method-arg", flag]) != 0
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
