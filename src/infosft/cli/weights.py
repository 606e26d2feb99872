"""``infosft weights``: the weight curve w(q) of every registered scheme, as a table.

Schemes whose weight is not a function of q alone (eaft reads the top-K entropy, talr a
micro-batch statistic) have no curve; the command names them and what they depend on.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

from infosft.objectives import DEFAULT_P_BAR, available_schemes, get_scheme, token_weights

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
    parser.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="METHOD.NAME=VALUE",
        help="a scheme's argument, e.g. power.k=5 or dft_mix.alpha=0.5 (repeatable)",
    )
    parser.set_defaults(run=run)


def parse_method_args(items: list[str]) -> dict[str, dict[str, Any]]:
    """``["power.k=5", ...]`` -> ``{"power": {"k": 5.0}}``; ValueError naming a bad item."""
    parsed: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        method, dot, name = key.partition(".")
        if not (sep and dot and method and name):
            raise ValueError(f"--method-arg must look like METHOD.NAME=VALUE, got {item!r}")
        try:
            number = float(value)
        except ValueError:
            raise ValueError(f"--method-arg {item!r}: {value!r} is not a number") from None
        parsed.setdefault(method, {})[name] = int(number) if number.is_integer() else number
    return parsed


def run(args: argparse.Namespace) -> int:
    import torch

    methods = args.methods or available_schemes()
    method_args = parse_method_args(args.method_arg)
    unused = sorted(set(method_args) - set(methods))
    if unused:
        raise ValueError(f"--method-arg names {', '.join(unused)}, which is not in --methods")
    schemes = [get_scheme(m, p_bar=args.p_bar, method_args=method_args.get(m)) for m in methods]
    bad = [q for q in args.q if not 0.0 < q <= 1.0]
    if bad:
        raise ValueError(f"--q values must lie in (0, 1], got {bad}")
    log_q = torch.tensor([math.log(q) for q in args.q], dtype=torch.float64)
    curves = [s for s in schemes if s.q_only]
    columns = {s.method: token_weights(log_q, s).tolist() for s in curves}
    print(f"w(q) at p_bar={schemes[0].p_bar}")
    print("q".rjust(8) + "".join(s.method.rjust(10) for s in curves))
    for i, q in enumerate(args.q):
        print(f"{q:8.3f}" + "".join(f"{columns[s.method][i]:10.4f}" for s in curves))
    for scheme in schemes:
        if scheme.method_args:
            settings = ", ".join(f"{k}={v}" for k, v in scheme.method_args.items())
            print(f"{scheme.method}: {settings}")
        if not scheme.q_only:
            needs = " and ".join(scheme.depends_on())
            print(f"{scheme.method}: no curve, w is not a function of q alone (it reads {needs})")
        if scheme.self_normalised:
            print(f"{scheme.method}: self-normalised, the loss divides by the sum of w")
    return 0
