"""A warning for retrieval numbers that mean nothing: passages that almost never hold an answer.

A reader cannot answer from passages without the answer, so a retrieval run whose recall@k is near
zero measures the corpus, not the model: typically a dataset asked against a corpus that does not
cover it (SimpleQA against the built-in NQ corpus). Below ``MIN_QUESTIONS`` questions the share is
too noisy to judge (one hit in ten is 10%), so no warning is given.
"""

from __future__ import annotations

from typing import Any

#: recall@k below this share of questions is flagged.
LOW_RECALL = 0.05
#: Fewer questions than this are not judged.
MIN_QUESTIONS = 20


def low_recall_warning(metrics: dict[str, Any], k: int | None, corpus: str, dataset: str) -> str | None:
    """One line naming the likely cause when recall@k is under ``LOW_RECALL`` over at least
    ``MIN_QUESTIONS`` questions; None otherwise (or without retrieval)."""
    recall = metrics.get("retrieval_recall") or {}
    n, mean = recall.get("n") or 0, recall.get("mean")
    if mean is None or n < MIN_QUESTIONS or mean >= LOW_RECALL:
        return None
    hits = round(mean * n)
    return (f"retrieved passages hold an answer for {hits} of {n} questions (recall@{k} {mean:.2f}): the corpus "
            f"{corpus} may not cover dataset {dataset}; bring a corpus that holds the answers with corpus=file "
            "corpus.path=... (passages as JSONL/Parquet, a DPR .json file or a BEIR folder)")
