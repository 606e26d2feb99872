"""Reports, summaries and plots: standalone HTML, mean ± std over seeds, what a run resolves."""

import base64
import re
import statistics

import pytest

from infosft.experiments import plots, report, summary

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_html_report_embeds_linked_images_so_it_stands_alone(tmp_path):
    image = plots.plot_q_histogram(
        [0.1, 0.5, 0.9], tmp_path / "hist.png", methods=["nll", "infosft"], p_bar=0.93, title="t"
    )
    markdown = "# Title\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n![histogram](hist.png)\n"
    _, html_path = report.write_report(markdown, tmp_path, "demo")
    html = html_path.read_text()
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert len(sources) == 1
    assert base64.b64decode(sources[0].removeprefix("data:image/png;base64,")) == (
        image.read_bytes()
    )
    assert "<table>" in html
    assert (tmp_path / "report.md").read_text() == markdown


def test_html_report_names_a_missing_image(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.png"):
        report.write_report("![x](missing.png)\n", tmp_path, "demo")


def test_mean_std_uses_the_sample_standard_deviation():
    values = [0.5, 0.6, 0.8]
    assert summary.format_mean_std(values) == (
        f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
    )
    assert summary.format_mean_std([0.25]) == "0.250"
    assert summary.format_mean_std([]) == "–"


def test_every_plot_writes_a_png(tmp_path):
    paths = [
        plots.plot_weight_mass(
            [0, 0.5, 1], [0.4, 0.6], {"dft": [0.2, 0.8]}, tmp_path / "c.png", title="t"
        ),
        plots.plot_mass_vs_p_bar(
            [0.9, 0.95], {"low": [0.5, 0.4], "high": [0.5, 0.6]}, tmp_path / "d.png", title="t"
        ),
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def records(curve, learning_rate, task_bits, probe_bits, seed=0):
    """A cell record as the engine writes it (only the keys the summaries read)."""
    return {
        "task": "t",
        "curve": curve,
        "method": curve,
        "learning_rate": learning_rate,
        "epochs": 1,
        "seed": seed,
        "accuracy": sum(task_bits) / len(task_bits),
        "retention": sum(probe_bits) / len(probe_bits),
        "kl_base_tuned": 0.01,
        "general_nll_delta": 0.0,
        "train_seconds": 1.0,
        "task_correct": {f"t/{i}": bool(b) for i, b in enumerate(task_bits)},
        "probe_correct": {f"p/{i}": bool(b) for i, b in enumerate(probe_bits)},
    }


def test_seeds_of_a_setting_pool_into_one_row_and_settings_stay_apart():
    cells = [
        records("nll", 1e-4, [1, 0], [1, 1], seed=0),
        records("nll", 1e-4, [1, 1], [1, 0], seed=1),
        records("nll", 1e-3, [0, 0], [1, 1]),
    ]
    rows = summary.setting_rows(cells)
    assert [(r["learning_rate"], r["seeds"]) for r in rows] == [(1e-4, [0, 1]), (1e-3, [0])]
    assert rows[0]["accuracy"]["values"] == [0.5, 1.0]
    assert rows[0]["accuracy"]["mean"] == 0.75


def test_one_seed_says_its_intervals_leave_out_run_to_run_variation():
    results = {
        "spec": {"seeds": [0], "learning_rates": [1e-4, 1e-3, 1e-2], "epochs": [1]},
        "base": {
            "retention_items": 100,
            "new_tasks": {"t": {"correct": dict.fromkeys(range(100))}},
        },
    }
    text = " ".join(summary.resolution(results))
    assert "±0.10" in text  # 100 items at 50%: the 95% Wilson interval is 0.40-0.60
    assert "run-to-run variation is not in them" in text
    results["spec"]["seeds"] = [0, 1, 2]
    assert "resample items and seeds together" in " ".join(summary.resolution(results))


@pytest.mark.parametrize("low_key", ["share_q_lt_low", "share_q_lt_0.05"])
def test_the_regime_line_reads_q_under_the_base_by_either_key_name(low_key):
    """Older base.json and results.json files name the low-q share by its bound."""
    q = {"median_q": 0.5, "share_q_ge_p_bar": 0.25, low_key: 0.4, "num_target_tokens": 8}
    results = {"base": {"new_tasks": {"t": {"accuracy": 0.5}}, "q_under_base": {"t": q}}}
    line = report._regime(results, "t")
    assert "median q 0.50, 25% with q >= 0.93" in line
    assert "40% with q < 0.05" in line
