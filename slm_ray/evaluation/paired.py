"""Paired statistics for two runs over the same questions.

Two configurations answered the same questions, so each question is its own control: the
difference of means is estimated from per-question differences, whose spread is much smaller than
that of two independent means (questions that are hard stay hard). The interval is a percentile
bootstrap of the mean difference (questions resampled as pairs), and for 0/1 metrics McNemar's
exact test asks whether the questions that changed went one way more often than chance.

Pure functions on plain sequences: the compare CLI and the sweep summary share them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from slm_ray.evaluation.metrics import bootstrap_ci

#: Metrics that are 0/1 by definition: for these McNemar's test applies.
BINARY_METRICS = frozenset({"exact_match", "match", "retrieval_recall"})


def _pair(a: Sequence[float], b: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    a_arr, b_arr = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if a_arr.shape != b_arr.shape or a_arr.ndim != 1:
        raise ValueError(f"paired values need two 1-D sequences of one length, got {a_arr.shape} and {b_arr.shape}")
    return a_arr, b_arr


def paired_bootstrap(a: Sequence[float], b: Sequence[float], n_resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> dict[str, Any]:
    """Mean of A, mean of B, and the mean paired difference B − A with its percentile-bootstrap
    interval (questions resampled with replacement, each keeping both its values).

    Resampling the differences is resampling the pairs, so this is ``bootstrap_ci`` on ``b - a``:
    the same seeded generator as every interval in results.json.
    """
    a_arr, b_arr = _pair(a, b)
    diff = bootstrap_ci(b_arr - a_arr, n_resamples=n_resamples, confidence=confidence, seed=seed)
    n = int(a_arr.size)
    return {"n": n, "mean_a": float(a_arr.mean()) if n else None, "mean_b": float(b_arr.mean()) if n else None,
            "diff": diff["mean"], "ci_low": diff["ci_low"], "ci_high": diff["ci_high"]}


def helped_hurt(a: Sequence[float], b: Sequence[float]) -> dict[str, int]:
    """How many questions B scored higher on than A (helped), lower (hurt), or the same.

    For a 0/1 metric, helped and hurt are McNemar's discordant pairs (wrong -> right, right -> wrong).
    """
    a_arr, b_arr = _pair(a, b)
    helped = int(np.sum(b_arr > a_arr))
    hurt = int(np.sum(b_arr < a_arr))
    return {"helped": helped, "hurt": hurt, "unchanged": int(a_arr.size) - helped - hurt}


def mcnemar_exact(helped: int, hurt: int) -> float:
    """Two-sided exact McNemar p-value: under "no difference" each discordant question is equally
    likely to go either way, so ``min(helped, hurt)`` is Binomial(helped + hurt, 1/2); the p-value is
    the probability of a split at least that uneven. 1.0 when no question changed."""
    if helped < 0 or hurt < 0:
        raise ValueError(f"counts must be non-negative, got helped={helped}, hurt={hurt}")
    n = helped + hurt
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(helped, hurt) + 1))
    return min(1.0, 2 * tail / 2**n)  # exact integers until the one division


def is_binary(values: Sequence[float]) -> bool:
    return all(v in (0.0, 1.0) for v in values)


def compare_metric(metric: str, a: Sequence[float], b: Sequence[float], n_resamples: int = 1000,
                   seed: int = 0) -> dict[str, Any]:
    """Everything reported for one metric: means, paired difference with CI, helped/hurt counts, and
    McNemar's p for a 0/1 metric (None otherwise)."""
    stats = paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    counts = helped_hurt(a, b)
    binary = metric in BINARY_METRICS and is_binary(a) and is_binary(b)
    p_value = mcnemar_exact(counts["helped"], counts["hurt"]) if binary else None
    return {"metric": metric, **stats, **counts, "binary": binary, "mcnemar_p": p_value}


def match_predictions(rows_a: Sequence[Mapping[str, Any]], rows_b: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pair the prediction rows of two runs by example id, in A's order.

    Returns ``pairs`` (row of A, row of B), ``only_a`` and ``only_b`` (ids answered by one run), and
    ``different`` (ids whose question or gold answers differ between the runs: not the same example).
    """
    by_id_b = {row["id"]: row for row in rows_b}
    ids_a = {row["id"] for row in rows_a}
    pairs = [(row, by_id_b[row["id"]]) for row in rows_a if row["id"] in by_id_b]
    different = [a["id"] for a, b in pairs
                 if a.get("question") != b.get("question") or list(a.get("answers") or []) != list(b.get("answers") or [])]
    return {"pairs": pairs, "only_a": [row["id"] for row in rows_a if row["id"] not in by_id_b],
            "only_b": [row["id"] for row in rows_b if row["id"] not in ids_a], "different": different}


def compare_pairs(pairs: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]], n_resamples: int = 1000,
                  seed: int = 0) -> dict[str, Any]:
    """Per metric stored in both runs' predictions: ``compare_metric`` over the pairs that have it in
    both (``retrieval_recall`` exists only for retrieved passages). Metrics in A's order;
    ``only_in_a`` / ``only_in_b`` name the metrics that cannot be paired."""
    order_a: dict[str, None] = {}
    order_b: dict[str, None] = {}
    for a, b in pairs:
        order_a.update(dict.fromkeys(a["metrics"]))
        order_b.update(dict.fromkeys(b["metrics"]))
    metrics = {}
    for metric in [m for m in order_a if m in order_b]:
        values = [(a["metrics"][metric], b["metrics"][metric]) for a, b in pairs
                  if a["metrics"].get(metric) is not None and b["metrics"].get(metric) is not None]
        if values:
            metrics[metric] = compare_metric(metric, [v[0] for v in values], [v[1] for v in values],
                                             n_resamples=n_resamples, seed=seed)
    return {"metrics": metrics, "only_in_a": [m for m in order_a if m not in order_b],
            "only_in_b": [m for m in order_b if m not in order_a]}
