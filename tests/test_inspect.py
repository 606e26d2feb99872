"""infosft inspect: it scores exactly the tokens the trainer trains on; q of target tokens,
weight mass per q bin, lowest-q tokens, the command."""

import json
import math

import pytest
import torch

from infosft.experiments import inspect as insp
from infosft.objectives import available_schemes, token_weights

P_BAR = 0.93


def reference_weight(q: float, method: str) -> float:
    """float64 weights from the paper's formulas, independent of infosft.objectives."""
    if method == "nll":
        return 1.0
    if method == "dft":
        return q
    c = math.log(P_BAR / (1 - P_BAR))
    logit = math.log(q / (1 - q))
    return q * max(0.0, 1 - logit / c)


def test_weight_mass_table_matches_a_float64_reference():
    qs = [0.001, 0.005, 0.05, 0.2, 0.2, 0.45, 0.6, 0.8, 0.95, 0.995]
    log_probs = torch.tensor([math.log(q) for q in qs], dtype=torch.float32)
    edges = insp.Q_BIN_EDGES
    methods = ("nll", "dft", "infosft")
    weights = {m: token_weights(log_probs, m, P_BAR) for m in methods}
    table = insp.weight_mass_table(log_probs, weights)

    def bin_of(q):
        return next(i for i in range(len(edges) - 1) if edges[i] <= q < edges[i + 1])

    token_share = [0.0] * (len(edges) - 1)
    for q in qs:
        token_share[bin_of(q)] += 1 / len(qs)
    assert table["token_share"] == pytest.approx(token_share, abs=1e-9)
    for method in methods:
        weights = [reference_weight(q, method) for q in qs]
        mass = [0.0] * (len(edges) - 1)
        for q, w in zip(qs, weights, strict=True):
            mass[bin_of(q)] += w / sum(weights)
        assert table["mass_share"][method] == pytest.approx(mass, abs=1e-6)
        assert table["mean_weight"][method] == pytest.approx(sum(weights) / len(qs), rel=1e-5)
    # q = 0.95 and 0.995 are above p_bar: InfoSFT gives them nothing.
    assert table["zero_weight_share"]["infosft"] == pytest.approx(0.2)


def test_infosft_mass_moves_toward_confident_tokens_as_p_bar_rises():
    log_probs = torch.linspace(0.01, 0.99, 99).log()
    sweep = insp.infosft_mass_vs_p_bar(log_probs, p_bars=(0.6, 0.99))
    low_p_bar, high_p_bar = sweep["mass_share"]
    assert high_p_bar[-1] > low_p_bar[-1] == 0.0
    assert sum(low_p_bar) == pytest.approx(1.0)


CHAT = [
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": f"What is {i} + 7?"},
            {"role": "assistant", "content": f"It is {i + 7}."},
            {"role": "user", "content": "Sure?"},
            {"role": "assistant", "content": "Yes."},
        ]
    }
    for i in range(3)
]
PROMPT_COMPLETION = [
    {
        "prompt": [{"role": "user", "content": "What is 12 + 7?"}],
        "completion": [{"role": "assistant", "content": "The answer is 19."}],
    },
]


@pytest.fixture(scope="module")
def smollm2_tokenizer(tiny_model_dir):
    """The tiny tokenizer with SmolLM2's template, which has no {% generation %} markers."""
    from transformers import AutoTokenizer

    from infosft.models import SMOLLM2_CHAT_TEMPLATE

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    tokenizer.chat_template = SMOLLM2_CHAT_TEMPLATE
    return tokenizer


@pytest.mark.parametrize(
    ("rows", "options", "expected_targets"),
    [
        (
            CHAT,
            {"assistant_only_loss": True},
            [f"It is {i + 7}.<|im_end|>Yes.<|im_end|>" for i in range(3)],
        ),
        (PROMPT_COMPLETION, {}, ["The answer is 19.<|im_end|>\n"]),
        (
            [{"text": "The capital of France is Paris. The capital of Italy is Rome."}],
            {"max_length": 5},
            None,
        ),
    ],
    ids=["assistant-only-smollm2", "conversational-completion", "truncated-text"],
)
def test_inspect_scores_exactly_the_positions_the_trainer_trains_on(
    tiny_model_dir, smollm2_tokenizer, tmp_path, rows, options, expected_targets
):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM

    from infosft.training import RunSpec, build_trainer

    values = {"output_dir": str(tmp_path), "use_cpu": True, "report_to": [], **options}
    spec = RunSpec.from_dict({**values, "data": Dataset.from_list(rows)})
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    trained_on = build_trainer(spec, model=model, tokenizer=smollm2_tokenizer).train_dataset

    scored = insp.score_prepared(model, insp.prepare_examples(spec, model, smollm2_tokenizer))
    assert len(scored) == len(trained_on)
    for example, row in zip(scored, trained_on, strict=True):
        assert example.input_ids == row["input_ids"]
        # The trainer's loss covers labels[t] != -100 for t >= 1 (position 0 predicts nothing).
        assert example.is_target == [t > 0 and lab != -100 for t, lab in enumerate(row["labels"])]
    if expected_targets is not None:
        decoded = [
            smollm2_tokenizer.decode(
                [i for i, t in zip(e.input_ids, e.is_target, strict=True) if t]
            )
            for e in scored
        ]
        assert decoded == expected_targets


def test_scored_log_probs_equal_a_float64_forward_pass(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"text": "The capital of France is Paris."}, {"text": "def add(a, b): return a"}]
    scored = insp.score_rows(model, tokenizer, rows)
    model64 = AutoModelForCausalLM.from_pretrained(tiny_model_dir).double().eval()
    for example in scored:
        ids = torch.tensor([example.input_ids])
        with torch.no_grad():
            reference = model64(input_ids=ids).logits[0, :-1].log_softmax(-1)
        expected = reference.gather(-1, ids[0, 1:, None])[:, 0]
        assert example.is_target == [False] + [True] * (ids.shape[1] - 1)
        assert example.log_probs[1:] == pytest.approx(expected.tolist(), abs=1e-4)


def test_eaft_and_talr_weights_are_their_per_token_weights_in_training_micro_batches(
    tiny_model_dir, tmp_path
):
    """Schemes that are not functions of q get their real weights: eaft from each token's
    top-20 entropy, talr from tau over micro-batches of per_device_train_batch_size rows, both
    against float64 formulas on the full logits."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infosft.training import RunSpec

    rows = [{"prompt": f"Q: {i} + 3?\nA:", "completion": " " + "7 " * (i + 1)} for i in range(3)]
    values = {"output_dir": str(tmp_path), "report_to": [], "per_device_train_batch_size": 2}
    spec = RunSpec.from_dict({**values, "data": Dataset.from_list(rows)})
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    schemes = insp.resolve_schemes(spec.args, ["eaft", "talr"])
    prepared = insp.prepare_examples(spec, model, tokenizer)
    got = insp.scheme_weights(insp.score_prepared(model, prepared, 2, schemes), schemes)

    model64 = AutoModelForCausalLM.from_pretrained(tiny_model_dir).double().eval()
    eaft, talr = [], []
    for start in (0, 2):  # the micro-batches: rows 0-1, then row 2
        log_qs = []
        for row in prepared.select(range(start, min(start + 2, len(prepared)))):
            ids = torch.tensor(row["input_ids"])
            with torch.no_grad():
                logits = model64(input_ids=ids[None]).logits[0, :-1]
            targets = torch.tensor(row["labels"][1:]) != -100
            log_q = logits.log_softmax(-1).gather(-1, ids[1:, None])[:, 0][targets]
            top = logits[targets].topk(20, dim=-1).values.log_softmax(-1)
            eaft += ((-(top.exp() * top).sum(-1)) / math.log(20)).tolist()
            log_qs.append(log_q)
        means = sorted(float(-lq.mean()) for lq in log_qs)
        tau = (means[(len(means) - 1) // 2] + means[len(means) // 2]) / 2
        talr += [max(math.exp(lq / tau), 0.01) for lq in torch.cat(log_qs).tolist()]
    assert got["eaft"].tolist() == pytest.approx(eaft, abs=1e-4)
    assert got["talr"].tolist() == pytest.approx(talr, abs=1e-4)


def test_regime_numbers_match_a_float64_count():
    qs = [0.01, 0.04, 0.3, 0.6, 0.95, 0.99]
    log_probs = torch.tensor([math.log(q) for q in qs])
    weights = {"dft": torch.tensor(qs)}
    numbers = insp.regime_numbers(log_probs, weights, P_BAR)
    assert numbers["share_q_ge_p_bar"] == pytest.approx(2 / 6)
    assert numbers["share_q_lt_low"] == pytest.approx(2 / 6)
    assert numbers["median_q"] == pytest.approx(0.3)  # torch's median: the lower middle value
    assert numbers["mean_weight"]["dft"] == pytest.approx(sum(qs) / 6)


REFERENCE = {
    "model": "the demo's model",
    "tasks": {
        "weak": {
            "regime": "new skill",
            "median_q": 0.9,
            "share_q_ge_p_bar": 0.5,
            "share_q_lt_low": 0.05,
            "mean_weight": {"infosft": 0.15},
            "base_accuracy": 0.0,
            "verdicts": ["at matched retention, infosft learns less"],
        },
        "strong": {
            "regime": "strong prior",
            "median_q": 0.7,
            "share_q_ge_p_bar": 0.3,
            "share_q_lt_low": 0.2,
            "mean_weight": {"infosft": 0.18},
            "base_accuracy": None,
            "verdicts": None,
        },
    },
}


def test_the_data_is_printed_beside_each_demo_regime_with_what_the_demo_found():
    mine = {
        "median_q": 0.42,
        "share_q_ge_p_bar": 0.123,
        "share_q_lt_low": 0.321,
        "mean_weight": {"infosft": 0.2},
    }
    text = "\n".join(insp.format_regimes(REFERENCE, P_BAR, mine))
    header = next(line for line in text.splitlines() if "your data" in line)
    assert header.split() == ["your", "data", "weak", "strong"]
    assert next(line for line in text.splitlines() if line.startswith("share q >= p_bar")).split()[
        -3:
    ] == ["0.123", "0.500", "0.300"]
    assert "at matched retention, infosft learns less" in text
    assert "strong (strong prior):\n    not measured yet" in text
    assert "does not place data on the axis" in text


def test_lowest_q_tokens_come_in_ascending_q_with_their_context():
    examples = [
        insp.ScoredExample([5, 6, 7], [False, True, True], [0.0, math.log(0.5), math.log(0.01)]),
        insp.ScoredExample([8, 9], [False, True], [0.0, math.log(0.1)]),
    ]

    class Decoder:
        def decode(self, ids):
            return " ".join(str(i) for i in ids)

    rows = insp.lowest_q_tokens(examples, Decoder(), k=2, context=5)
    assert [(r["token"], r["context"]) for r in rows] == [("7", "5 6"), ("9", "8")]
    assert [r["q"] for r in rows] == pytest.approx([0.01, 0.1])


def test_inspect_command_reports_the_completion_tokens_and_writes_json_and_plots(
    tiny_model_dir, tmp_path, capsys
):
    from transformers import AutoTokenizer

    from infosft.cli import main

    data = tmp_path / "train.jsonl"
    rows = [
        {"prompt": "Q: 2 + 3?\nA:", "completion": " 5"},
        {"prompt": "Q: capital of Italy?\nA:", "completion": " Rome"},
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "inspect"
    argv = ["inspect", "--model", str(tiny_model_dir), "--data", str(data)]
    code = main([*argv, "--output-dir", str(out)])
    assert code == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    summary = json.loads((out / "inspect.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    # Each completion's tokens plus the end-of-sequence token appended to it.
    expected = sum(len(tokenizer(r["completion"])["input_ids"]) + 1 for r in rows)
    assert summary["num_target_tokens"] == expected
    assert f"{expected} target tokens in 2 examples" in printed
    # Every registered scheme, those that are not functions of q included.
    assert list(summary["bins"]["mass_share"]) == available_schemes()
    for method in ("nll", "eaft", "talr"):
        assert sum(summary["bins"]["mass_share"][method]) == pytest.approx(1.0)
    assert set(summary["regime"]["mean_weight"]) == set(available_schemes())
    for task in summary["regimes_reference"]["tasks"]:
        assert task in printed
    for name in summary["figures"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["figures"]


@pytest.mark.parametrize("value", ["0", "-5", "ten"])
def test_max_length_below_one_token_is_a_one_line_error(tmp_path, capsys, value):
    from infosft.cli import main

    with pytest.raises(SystemExit) as stop:
        main(["inspect", "--data", "d.jsonl", "--max-length", value])
    assert stop.value.code == 2
    assert "--max-length" in capsys.readouterr().err


def test_max_length_below_one_in_a_config_is_an_error(tmp_path, capsys):
    from infosft.cli import main

    (tmp_path / "r.yaml").write_text("data: d.jsonl\nmax_length: 0\n")
    assert main(["inspect", "--config", str(tmp_path / "r.yaml")]) == 2
    assert "max_length must be a positive whole number of tokens" in capsys.readouterr().err


def test_scoring_rows_leaves_the_model_fit_to_be_copied_and_trained(tiny_model_dir, tmp_path):
    """The demo scores its base model, then trains deep copies of it."""
    import copy

    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from infosft.training import RunSpec, build_trainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [{"prompt": "Q: 2 + 3?\nA:", "completion": " 5"}] * 2
    insp.score_rows(model, tokenizer, rows)
    values = {"output_dir": str(tmp_path), "use_cpu": True, "max_steps": 1, "report_to": []}
    spec = RunSpec.from_dict({**values, "data": Dataset.from_list(rows)})
    trainer = build_trainer(spec, model=copy.deepcopy(model), tokenizer=tokenizer)
    assert trainer.train().training_loss > 0


MINE_NEAR_STRONG = {
    "median_q": 0.6,
    "share_q_ge_p_bar": 0.28,
    "share_q_lt_low": 0.22,
    "mean_weight": {"infosft": 0.17},
}


def test_the_nearest_regime_is_the_one_at_the_smallest_euclidean_distance_in_q_statistics():
    regimes = {name: insp.regime_statistics(t) for name, t in REFERENCE["tasks"].items()}
    # float64 by hand: (0.28-0.5)^2 + (0.22-0.05)^2 + (0.17-0.15)^2 = 0.0777 against
    # (0.28-0.3)^2 + (0.22-0.2)^2 + (0.17-0.18)^2 = 0.0009
    assert insp.nearest_regime(insp.regime_statistics(MINE_NEAR_STRONG), regimes) == "strong"
    assert insp.nearest_regime(regimes["weak"], regimes) == "weak"


def test_without_a_supporting_test_the_closest_regime_is_named_but_no_verdict_is_predicted():
    for test in (None, {"supported": False, "regimes": {"strong": {"label": "nll ahead"}}}):
        reference = {**REFERENCE, **({"when_to_use": test} if test else {})}
        line = insp.closest_regime_line(reference, MINE_NEAR_STRONG)
        assert line.startswith("closest to strong in q statistics;")
        assert "do not support predicting the verdict" in line and "nll ahead" not in line
        text = "\n".join(insp.format_regimes(reference, P_BAR, MINE_NEAR_STRONG))
        assert line in text


def test_a_supporting_test_carries_the_closest_regimes_measured_verdict():
    test = {"supported": True, "summary": "rho 1.0", "regimes": {"strong": {"label": "nll ahead"}}}
    line = insp.closest_regime_line({**REFERENCE, "when_to_use": test}, MINE_NEAR_STRONG)
    assert line == (
        "closest to strong in q statistics, where the measured verdict was: nll ahead (rho 1.0)"
    )


def test_q_summary_of_no_target_tokens_is_nan_not_an_error():
    summary = insp.q_summary(torch.tensor([]))
    assert summary["num_target_tokens"] == 0
    assert all(math.isnan(summary[k]) for k in ("median_q", "share_q_ge_p_bar", "share_q_lt_low"))
