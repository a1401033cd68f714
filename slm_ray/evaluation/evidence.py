"""Per-passage evidence of a retrieval run: which retrieved passage holds a gold answer, and where.

Each prediction line of a ``retriever_context`` run lists its passages as ``retrieved``: id, rank
(from 1), the retriever's score and whether a gold answer occurs in the passage (the metrics'
normalisation, over ``title\\ntext`` as recall@k reads it), plus ``first_answer_rank``. From these a
reader tells a retrieval failure (no passage holds the answer) from a reading failure (one does,
the model missed it) question by question.

Lines written before this existed have ``contexts`` but no ``retrieved``: ``with_rank_metrics``
derives their ``retrieval_mrr`` from the stored contexts (in rank order), so a resumed or
recomputed run aggregates every line alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from slm_ray.evaluation.metrics import passages_with_answer, reciprocal_rank


def scored_text(title: str, text: str) -> str:
    """What recall@k and the evidence search for an answer in: the title line, then the text."""
    return f"{title}\n{text}"


def passage_evidence(hits: Sequence[Any], answers: Sequence[str]) -> dict[str, Any]:
    """``retrieved`` (one entry per passage, best first) and ``first_answer_rank`` (None: no passage
    holds an answer) of one question; ``hits`` are RetrievedPassage-like (``passage``, ``score``)."""
    has_answer = passages_with_answer([scored_text(h.passage.title, h.passage.text) for h in hits], answers)
    retrieved = [{"id": h.passage.id, "rank": rank, "score": round(float(h.score), 6), "has_answer": found}
                 for rank, (h, found) in enumerate(zip(hits, has_answer), start=1)]
    first = next((entry["rank"] for entry in retrieved if entry["has_answer"]), None)
    return {"retrieved": retrieved, "first_answer_rank": first}


def with_rank_metrics(row: dict[str, Any]) -> dict[str, Any]:
    """The row with ``metrics.retrieval_mrr``: as stored, or (a line of an older version, which has
    ``retrieval_recall`` but not the rank) recomputed from its stored contexts. Returns a copy
    when it adds the metric; the line on disk is left as it was written."""
    metrics = row.get("metrics") or {}
    contexts = row.get("contexts")
    if "retrieval_mrr" in metrics or "retrieval_recall" not in metrics or contexts is None:
        return row
    texts = [scored_text(c.get("title", ""), c.get("text", "")) for c in contexts]
    mrr = reciprocal_rank(passages_with_answer(texts, list(row.get("answers") or [])))
    return {**row, "metrics": {**metrics, "retrieval_mrr": mrr}}
