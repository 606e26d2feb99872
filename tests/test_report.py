"""Reports and plots: standalone HTML, atomic JSON, mean ± std, and the demo writing them all."""

import base64
import json
import re
import statistics

import pytest

from infosft.experiments import plots, report

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
    assert report.format_mean_std(values) == (
        f"{statistics.fmean(values):.3f} ± {statistics.stdev(values):.3f}"
    )
    assert report.format_mean_std([0.25]) == "0.250"
    assert report.format_mean_std([]) == "–"


def test_json_is_written_atomically_with_non_finite_numbers_as_null(tmp_path):
    path = report.write_json_atomic(tmp_path / "r.json", {"a": float("nan"), "b": [1.5]})
    assert json.loads(path.read_text()) == {"a": None, "b": [1.5]}
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_every_plot_writes_a_png(tmp_path):
    paths = [
        plots.plot_tradeoff(
            [plots.TradeoffPoint("nll", 0.8, 0.5, 0.05, 0.1), plots.TradeoffPoint("base", 1, 0)],
            tmp_path / "a.png",
            title="t",
            x_label="x",
            y_label="y",
        ),
        plots.plot_training_curves(
            {"nll": [{"step": 1, "loss": 2.0, "nll": 2.0, "mean_q": 0.2, "entropy": 3.0}]},
            tmp_path / "b.png",
            title="t",
        ),
        plots.plot_weight_mass(
            [0, 0.5, 1], [0.4, 0.6], {"dft": [0.2, 0.8]}, tmp_path / "c.png", title="t"
        ),
        plots.plot_mass_vs_p_bar(
            [0.9, 0.95], {"low": [0.5, 0.4], "high": [0.5, 0.6]}, tmp_path / "d.png", title="t"
        ),
    ]
    assert all(p.read_bytes()[:8] == PNG_MAGIC for p in paths)


def test_demo_writes_report_html_results_and_plots(tiny_model_dir, tmp_path):
    from infosft.experiments.demo import DemoConfig, run_demo

    config = DemoConfig(
        model=str(tiny_model_dir),
        methods=("infosft",),
        steps=1,
        batch_size=2,
        n_test=2,
        n_probes=2,
        n_general_prompts=1,
        max_new_tokens=4,
    )
    results = run_demo(config, tmp_path, log=lambda message: None)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [(r["method"], r["seed"]) for r in saved["runs"]] == [("infosft", 0)]
    assert saved["config"]["learning_rate"] == config.learning_rate
    assert set(saved["summary"]) == {"infosft"}
    assert results["runs"][0]["curves"], "training curves were not logged"
    for name in ("report.md", "report.html"):
        assert "new-task accuracy" in (tmp_path / name).read_text()
    assert all((tmp_path / f).read_bytes()[:8] == PNG_MAGIC for f in saved["figures"])
