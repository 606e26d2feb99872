"""Every built-in scheme's loss written out from its definition, in plain float64, token by token.

Nothing here imports ``infosft``: the fused and reference losses are checked against these
formulas, never against each other. For a target token q = p(target), l = -log q, and the
loss is ``sum_t -sg(w_t) log q_t / D`` with D the target count (or ``num_items``), except for
a self-normalised scheme (memft), whose D is ``max(sum_t w_t, 1)``, scaled by
``num_items / N`` when ``num_items`` is given. The KL anchor adds
``beta * sum_t KL(p_base || p_theta) / N`` (N, or ``num_items``).

A scheme added to the package without a formula here makes the parity tests that run over
every scheme fail at :func:`weight_formula`, on purpose.
"""

import math
import statistics

P_BAR = 0.93
LN2 = math.log(2.0)
IGNORE = -100
SELF_NORMALISED = {"memft"}


def infosft_weight(nll: float, p_bar: float = P_BAR) -> float:
    """w = q * max(0, 1 - logit(q) / logit(p_bar)), 0 at q = 0 and at q = 1 (arXiv 2605.14967)."""
    q = math.exp(-nll)
    if q == 0.0 or nll == 0.0:
        return 0.0
    logit = -nll - math.log(-math.expm1(-nll))  # log q - log(1 - q), exact near q = 1
    return q * max(0.0, 1.0 - logit / math.log(p_bar / (1.0 - p_bar)))


def weight_formula(method, nll, *, p_bar=P_BAR, top_k_logits=None, tau=None, args=None):
    """w of one token from its l = nll, (eaft) its K largest logits and (talr) the batch's tau."""
    args = args or {}
    q = math.exp(-nll)
    if method == "nll":
        return 1.0
    if method == "dft":
        return q
    if method == "infosft":
        return infosft_weight(nll, p_bar)
    if method == "eaft":
        k, alpha = args.get("top_k", 20), args.get("alpha", 1.0)
        p = top_k_logits.double().softmax(-1)
        h_k = -(p * p.log()).sum().item()
        return (h_k / math.log(k)) ** alpha
    if method == "talr":
        return max(q ** (1.0 / tau), 0.01)
    if method == "memft":
        return 1.0 if nll > LN2 else 0.0
    if method == "dft_mix":
        alpha = args.get("alpha", 0.7)
        return alpha * q + (1.0 - alpha)
    if method == "power":
        k = args.get("k", 10.0)
        return k * q**k
    raise KeyError(f"no float64 formula for scheme {method!r}; write one in tests/formulas.py")


def targets_of(labels):
    """(row, position t, target y) of every target: position t predicts labels[t + 1]."""
    return [
        (row, t, int(labels[row, t + 1]))
        for row in range(labels.shape[0])
        for t in range(labels.shape[1] - 1)
        if labels[row, t + 1] != IGNORE
    ]


def formula_loss(
    logits, labels, method, *, p_bar=P_BAR, base_logits=None, beta=0.0, num_items=None, args=None
):
    """The scheme's loss from float64 logits [B, T, V], differentiable in the logits."""
    targets = targets_of(labels)
    log_q = {key: logits[key[0], key[1]].log_softmax(-1)[key[2]] for key in targets}
    nll = {key: -value.item() for key, value in log_q.items()}
    tau = None
    if method == "talr":
        rows = sorted({row for row, _, _ in targets})
        tau = statistics.median(
            statistics.mean(nll[key] for key in targets if key[0] == row) for row in rows
        )
    weights = {}
    for key in targets:
        top = None
        if method == "eaft":
            top = logits[key[0], key[1]].detach().topk((args or {}).get("top_k", 20)).values
        weights[key] = weight_formula(
            method, nll[key], p_bar=p_bar, top_k_logits=top, tau=tau, args=args
        )
    n = len(targets) if num_items is None else num_items
    total = sum(-weights[key] * log_q[key] for key in targets) + 0.0 * logits.sum()
    if method in SELF_NORMALISED:
        denominator = max(sum(weights.values()), 1.0)
        if num_items is not None:
            denominator *= num_items / max(len(targets), 1)
    else:
        denominator = max(n, 1)
    loss = total / denominator
    if beta:
        kl = 0.0
        for row, t, _ in targets:
            log_p_base = base_logits[row, t].double().log_softmax(-1)
            kl = kl + (log_p_base.exp() * (log_p_base - logits[row, t].log_softmax(-1))).sum()
        loss = loss + beta * kl / max(n, 1)
    return loss


def formula_loss_and_grads(hidden, weight, bias, labels, method, *, upstream=1.0, **kwargs):
    """:func:`formula_loss` of the LM head ``hidden @ weight.T + bias`` in float64, and the
    gradients of ``upstream * loss`` with respect to hidden, weight and bias (None if no bias)."""
    leaves = [
        t.detach().double().requires_grad_() if t is not None else None
        for t in (hidden, weight, bias)
    ]
    h, w, b = leaves
    logits = h @ w.t() + (b if b is not None else 0.0)
    loss = formula_loss(logits, labels, method, **kwargs)
    (loss * upstream).backward()
    return loss.detach(), [t.grad if t is not None else None for t in leaves]
