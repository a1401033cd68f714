"""Retrieval quality: recall@1, recall@5 and MRR@5 of BM25, dense and the two hybrids on built-in NQ.

Run from the repository root::

    .venv/bin/python bench/bench_retrieval_quality.py                      # all 2,655 questions
    .venv/bin/python bench/bench_retrieval_quality.py --queries 300 --alpha 0.75 --rrf-k 60 --depth 100

Each retriever searches the built-in corpus (3,600 passages) through ``build_or_load`` with the
project's index cache (``--cache-dir``, default ``.cache``: the dense index is encoded once, then
loaded; the hybrids load the BM25 and dense indexes): ``hybrid`` is the convex combination of
normalised scores (``--alpha``, default the shipped one), ``hybrid_rrf`` reciprocal rank fusion
(``--rrf-k``). These are all the questions, alpha's tuning split included: ``bench_fusion.py``
measures on the questions that did not choose alpha. recall@k is the share of questions with a gold
answer in one of the top-k passages (``title\\ntext``, the metrics' normalisation: exactly the
experiment's ``retrieval_recall``); MRR@5 is the mean of 1 / rank of the first answer-bearing
passage in the top 5 (0 when none: the experiment's ``retrieval_mrr`` at k=5).
Results go to ``bench/results/retrieval_quality.json`` and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from slm_ray.config import BM25Config, DenseConfig, HybridConfig
from slm_ray.data.corpus import builtin_nq_corpus
from slm_ray.data.nq import NQOpenDataset
from slm_ray.evaluation.evidence import scored_text
from slm_ray.evaluation.metrics import passages_with_answer, reciprocal_rank
from slm_ray.retrieval.base import build_or_load

ROOT = Path(__file__).resolve().parent
K = 5
BATCH = 256  # the experiment's default retrieval_batch_size


def quality(retriever, questions: list[str], answers: list[tuple[str, ...]]) -> dict:
    """recall@1, recall@5 and MRR@5 over the questions, and the search time."""
    started = time.perf_counter()
    rows = []
    for start in range(0, len(questions), BATCH):
        rows.extend(retriever.retrieve(questions[start:start + BATCH], K))
    seconds = time.perf_counter() - started
    flags = [passages_with_answer([scored_text(h.passage.title, h.passage.text) for h in row], gold)
             for row, gold in zip(rows, answers)]
    n = len(flags)
    return {"recall_at_1": round(sum(f[:1] == [True] for f in flags) / n, 4),
            "recall_at_5": round(sum(any(f) for f in flags) / n, 4),
            "mrr_at_5": round(sum(reciprocal_rank(f) for f in flags) / n, 4),
            "query_s": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=None, help="the first N questions (default: all)")
    parser.add_argument("--alpha", type=float, default=HybridConfig().alpha, help="hybrid's weight of dense")
    parser.add_argument("--rrf-k", type=float, default=HybridConfig().rrf_k, help="hybrid_rrf's fusion constant")
    parser.add_argument("--depth", type=int, default=HybridConfig().depth, help="the hybrids' depth of each ranking")
    parser.add_argument("--cache-dir", default=".cache", help="index cache (reused across runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "retrieval_quality.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    passages = builtin_nq_corpus()
    examples = NQOpenDataset(name="nq", path="builtin", limit=args.queries).load()
    questions, answers = [e.question for e in examples], [e.answers for e in examples]
    configs = {"bm25": BM25Config(), "dense": DenseConfig(),
               "hybrid": HybridConfig(fusion="convex", alpha=args.alpha, depth=args.depth),
               "hybrid_rrf": HybridConfig(fusion="rrf", rrf_k=args.rrf_k, depth=args.depth)}
    res: dict = {"benchmark": "retrieval_quality", "command": " ".join([Path(sys.executable).name, *sys.argv]),
                 "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                 "n_passages": len(passages), "n_questions": len(questions),
                 "hybrid": {"alpha": args.alpha, "depth": args.depth},
                 "hybrid_rrf": {"rrf_k": args.rrf_k, "depth": args.depth}, "retrievers": {}}
    for name, cfg in configs.items():
        retriever, _ = build_or_load(cfg, passages, args.cache_dir)
        retriever.retrieve([questions[0]], K)  # loads the encoder outside the timed search
        res["retrievers"][name] = quality(retriever, questions, answers)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(f"{len(questions)} NQ questions, {len(passages)} passages (hybrid: convex, alpha={args.alpha:g}; "
          f"hybrid_rrf: rrf_k={args.rrf_k:g}; depth={args.depth})")
    print(f"{'retriever':<12}{'recall@1':>10}{'recall@5':>10}{'MRR@5':>8}{'query s':>9}")
    for name, q in res["retrievers"].items():
        print(f"{name:<12}{q['recall_at_1']:>10.3f}{q['recall_at_5']:>10.3f}{q['mrr_at_5']:>8.3f}{q['query_s']:>9.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
