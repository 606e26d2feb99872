"""``infosft weights``: the weight curve w(q) of every registered scheme, as a table."""

from __future__ import annotations

import argparse
import math

from infosft.objectives import DEFAULT_P_BAR, available_weightings, check_p_bar, token_weights

DEFAULT_QS = (0.01, 0.1, 0.3, 0.5, 0.568, 0.8, 0.9, 0.93, 0.99)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "weights", help="print w(q) of each weighting scheme at a few probabilities"
    )
    parser.add_argument("--p-bar", type=float, default=DEFAULT_P_BAR, help="InfoSFT clip point")
    parser.add_argument(
        "--q", type=float, nargs="+", default=list(DEFAULT_QS), help="probabilities to show"
    )
    parser.add_argument(
        "--methods", nargs="+", default=None, help="schemes to show (default: all registered)"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import torch

    p_bar = check_p_bar(args.p_bar)
    methods = args.methods or available_weightings()
    bad = [q for q in args.q if not 0.0 < q <= 1.0]
    if bad:
        raise ValueError(f"--q values must lie in (0, 1], got {bad}")
    log_q = torch.tensor([math.log(q) for q in args.q], dtype=torch.float64)
    columns = {m: token_weights(log_q, m, p_bar).tolist() for m in methods}
    print(f"w(q) at p_bar={p_bar}")
    print("q".rjust(8) + "".join(m.rjust(10) for m in methods))
    for i, q in enumerate(args.q):
        print(f"{q:8.3f}" + "".join(f"{columns[m][i]:10.4f}" for m in methods))
    return 0
