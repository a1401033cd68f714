"""Answer-quality metrics for open-domain QA, plus bootstrap confidence intervals.

Normalisation follows the official SQuAD v1.1 evaluation script exactly so that numbers are
comparable with the literature. The headline metric is ``token_recall``: small models tend to
answer in a full sentence ("The prize went to Wilhelm Röntgen"), which exact match and F1 punish
for verbosity although the answer is there; recall asks only whether the gold tokens were said.

A gold answer that SQuAD's normalisation empties ("The The", a band; "A", a vitamin; "?") is
compared under the strongest lighter normalisation that leaves it something (``NORMALISATIONS``):
SQuAD's without dropping articles, then case and whitespace only; the prediction is normalised the
same way for that gold. So the perfect answer scores 1.0 on every metric, as SQuAD's script scores
an empty-against-empty pair (EM 1, F1 1), while an empty or unrelated prediction does not (the script
would give "" or "a" EM 1 against "The The"). Golds SQuAD leaves non-empty score exactly as there.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Mapping, Sequence

import numpy as np

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_BOOTSTRAP_CHUNK_CELLS = 2_000_000  # bounds the resample index matrix to ~16 MB


def normalize_answer(text: str) -> str:
    """Lower-case, drop ASCII punctuation, drop the articles a/an/the, collapse whitespace.

    This is SQuAD v1.1's ``normalize_answer`` step for step. Accents are deliberately kept (no
    NFKD folding): SQuAD keeps them, so "Röntgen" and "Rontgen" stay different tokens and our
    scores remain comparable with published ones. Only ``string.punctuation`` is removed, so
    non-ASCII punctuation such as "«" or "—" survives, again as in SQuAD.
    """
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _keep_articles(text: str) -> str:
    """SQuAD's normalisation without dropping a/an/the: for golds that are only articles ("The The")."""
    return " ".join("".join(ch for ch in text.lower() if ch not in _PUNCTUATION).split())


def _case_and_space(text: str) -> str:
    """Case and whitespace only: for golds that are only punctuation ("?", "...")."""
    return " ".join(text.lower().split())


#: Strongest first: each gold answer is compared under the first one that leaves it non-empty.
NORMALISATIONS: tuple[Callable[[str], str], ...] = (normalize_answer, _keep_articles, _case_and_space)


def _normalized_golds(gold_answers: Sequence[str]) -> list[tuple[Callable[[str], str], str]]:
    """(normalisation, normalised gold) for every gold with something left under one of
    ``NORMALISATIONS``; rejects a bare string, whose characters would be taken as one-letter golds."""
    if isinstance(gold_answers, str):
        raise TypeError("gold_answers must be a sequence of strings, not a single string")
    golds = []
    for gold in gold_answers:
        for normalise in NORMALISATIONS:
            normalized = normalise(gold)
            if normalized:
                golds.append((normalise, normalized))
                break
    return golds


class _Normalised:
    """A text under each normalisation, computed once when first asked for (a passage is scanned
    for every gold answer)."""

    def __init__(self, text: str):
        self.text = text
        self._forms: dict[Callable[[str], str], str] = {}

    def __call__(self, normalise: Callable[[str], str]) -> str:
        if normalise not in self._forms:
            self._forms[normalise] = normalise(self.text)
        return self._forms[normalise]


def _contains_phrase(haystack: str, phrase: str) -> bool:
    """Whether normalised ``phrase`` occurs in normalised ``haystack`` on token boundaries, so
    that gold "1" is not found inside "1901"."""
    return f" {phrase} " in f" {haystack} "


def token_recall(prediction: str, gold_answers: Sequence[str]) -> float:
    """Share of a gold answer's tokens present in the prediction (as a multiset), best gold.

    Verbose but correct answers score 1.0, which is why this is the headline metric; counting
    with multiplicity means gold "New New York" needs "new" twice.
    """
    predicted = _Normalised(prediction)
    best = 0.0
    for normalise, gold in _normalized_golds(gold_answers):
        gold_tokens = Counter(gold.split())
        overlap = sum((Counter(predicted(normalise).split()) & gold_tokens).values())
        best = max(best, overlap / sum(gold_tokens.values()))
    return best


def exact_match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 if the normalised prediction equals some normalised gold answer, else 0.0."""
    predicted = _Normalised(prediction)
    return float(any(predicted(normalise) == gold for normalise, gold in _normalized_golds(gold_answers)))


def _f1(predicted_tokens: list[str], gold_tokens: list[str]) -> float:
    """SQuAD's token F1 between one prediction and one gold answer."""
    overlap = sum((Counter(predicted_tokens) & Counter(gold_tokens)).values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(predicted_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def token_f1(prediction: str, gold_answers: Sequence[str]) -> float:
    """SQuAD token F1, best gold; reported for comparability, it penalises verbose answers."""
    predicted = _Normalised(prediction)
    return max((_f1(predicted(normalise).split(), gold.split()) for normalise, gold in _normalized_golds(gold_answers)),
               default=0.0)


def match(prediction: str, gold_answers: Sequence[str]) -> float:
    """1.0 if some whole normalised gold answer occurs in the normalised prediction.

    Stricter than token recall (the gold tokens must be contiguous and in order), looser than
    exact match (extra words around the answer are allowed).
    """
    predicted = _Normalised(prediction)
    golds = _normalized_golds(gold_answers)
    return float(any(_contains_phrase(predicted(normalise), gold) for normalise, gold in golds))


def passages_with_answer(passage_texts: Sequence[str], gold_answers: Sequence[str]) -> list[bool]:
    """For each passage, whether some gold answer occurs in it (as in ``match``): the evidence
    behind recall@k and the rank of the first answer-bearing passage."""
    golds = _normalized_golds(gold_answers)
    found = []
    for text in passage_texts:
        passage = _Normalised(text)
        found.append(any(_contains_phrase(passage(normalise), gold) for normalise, gold in golds))
    return found


def retrieval_recall(passage_texts: Sequence[str], gold_answers: Sequence[str]) -> float:
    """1.0 if some gold answer occurs (as in ``match``) in some of the given passages.

    With the top-k retrieved passages this is recall@k: it bounds what the reader can achieve
    and separates retrieval failures from reading failures.
    """
    return float(any(passages_with_answer(passage_texts, gold_answers)))


def reciprocal_rank(has_answer: Sequence[bool]) -> float:
    """1 / rank of the first answer-bearing passage (ranks from 1), 0.0 when none holds an answer:
    its mean over questions is the MRR, which tells a retriever that puts the answer first from
    one that finds it at rank k, where recall@k sees no difference."""
    return next((1.0 / rank for rank, hit in enumerate(has_answer, start=1) if hit), 0.0)


def score_example(
    prediction: str,
    gold_answers: Sequence[str],
    passage_texts: Sequence[str] | None = None,
) -> dict[str, float]:
    """All per-example metrics in one row; ``retrieval_recall`` and ``retrieval_mrr`` only when
    passages were given (best first), so closed-book rows do not report a meaningless 0."""
    row = {
        "token_recall": token_recall(prediction, gold_answers),
        "exact_match": exact_match(prediction, gold_answers),
        "f1": token_f1(prediction, gold_answers),
        "match": match(prediction, gold_answers),
    }
    if passage_texts is not None:
        has_answer = passages_with_answer(passage_texts, gold_answers)
        row["retrieval_recall"] = float(any(has_answer))
        row["retrieval_mrr"] = reciprocal_rank(has_answer)
    return row


def _bootstrap_means(
    values: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Means of ``n_resamples`` resamples with replacement, drawn in chunks so the index matrix
    stays small for large evaluation sets."""
    n = values.size
    rows_per_chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    chunks = []
    for start in range(0, n_resamples, rows_per_chunk):
        rows = min(rows_per_chunk, n_resamples - start)
        chunks.append(values[rng.integers(0, n, size=(rows, n))].mean(axis=1))
    return np.concatenate(chunks)


def bootstrap_ci(
    values: Sequence[float],
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """Mean with a percentile-bootstrap confidence interval, deterministic for a given seed.

    Sweeps compare configurations on a few hundred questions; the interval shows which
    differences are noise. Returns ``{"mean", "ci_low", "ci_high", "n"}``; with no values the
    statistics are None, with one value the interval collapses onto it.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be strictly between 0 and 1, got {confidence}")
    array = np.asarray(values, dtype=float)
    n = int(array.size)
    if n == 0:
        return {"mean": None, "ci_low": None, "ci_high": None, "n": 0}
    mean = float(array.mean())
    if n == 1:
        return {"mean": mean, "ci_low": mean, "ci_high": mean, "n": 1}
    means = _bootstrap_means(array, n_resamples, np.random.default_rng(seed))
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1.0 - alpha / 2])
    return {"mean": mean, "ci_low": float(low), "ci_high": float(high), "n": n}


def aggregate(
    per_example: Sequence[Mapping[str, float]],
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, dict]:
    """Bootstrap summary of every metric found in the rows, in first-seen order.

    A metric missing from some rows (``retrieval_recall`` in closed-book rows) is summarised
    over the rows that have it, and its ``n`` says how many those were.
    """
    columns: dict[str, list[float]] = {}
    for row in per_example:
        for key, value in row.items():
            columns.setdefault(key, []).append(value)
    return {
        key: bootstrap_ci(column, n_resamples=n_resamples, seed=seed)
        for key, column in columns.items()
    }
