"""Hybrid fusion: choose alpha of the convex combination on a tuning split, measure everything on the rest.

Run from the repository root::

    .venv/bin/python bench/bench_fusion.py                    # alpha 0, 0.05, ..., 1; depth 100
    .venv/bin/python bench/bench_fusion.py --step 0.1 --depth 50

The built-in NQ questions are split by a hash of their id (``slm_ray.data.splits``): about 20%
(530) tune, the other 2,125 test. BM25 and dense (all-MiniLM-L6-v2, FAISS flat, through the
project's index cache ``--cache-dir``) each rank the top ``depth`` passages of every question once;
RRF (``--rrf-k``) and the convex combination at every alpha of the grid are then computed from those
two lists with the very functions ``HybridRetriever`` calls. recall@k is the share of questions with
a gold answer in one of the top k passages (``title\\ntext``, the experiment's ``retrieval_recall``).
alpha is chosen by recall@1 + recall@5 on the tuning split (the first of equals in grid order); the
table gives every method on both splits. Results go to ``bench/results/fusion.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from slm_ray.config import BM25Config, DenseConfig, HybridConfig
from slm_ray.data.base import Passage, QAExample
from slm_ray.data.corpus import builtin_nq_corpus
from slm_ray.data.nq import NQOpenDataset
from slm_ray.data.splits import TUNING_SHARE, in_tuning_split
from slm_ray.evaluation.evidence import scored_text
from slm_ray.evaluation.metrics import passages_with_answer
from slm_ray.retrieval.base import build_or_load
from slm_ray.retrieval.hybrid import convex_fusion, reciprocal_rank_fusion

ROOT = Path(__file__).resolve().parent
K = 5
BATCH = 256  # the experiment's default retrieval_batch_size

Hits = list[tuple[int, float]]
Fuse = Callable[[Hits, Hits], Hits]


def ranked(cfg, passages: list[Passage], questions: list[str], depth: int, cache_dir: str) -> list[Hits]:
    """Each question's top ``depth`` (passage index, score) from the retriever ``cfg`` describes."""
    retriever, _ = build_or_load(cfg, passages, cache_dir)
    rows: list[Hits] = []
    for start in range(0, len(questions), BATCH):
        rows.extend(retriever.search(questions[start:start + BATCH], depth))
    return rows


def recall(top: list[list[int]], examples: list[QAExample], passages: list[Passage]) -> dict[str, float]:
    """recall@1 and recall@5 of top-5 passage indexes, one list per example."""
    flags = [passages_with_answer([scored_text(passages[i].title, passages[i].text) for i in row], e.answers)
             for row, e in zip(top, examples)]
    n = len(flags)
    return {"recall_at_1": round(sum(f[:1] == [True] for f in flags) / n, 4),
            "recall_at_5": round(sum(any(f) for f in flags) / n, 4)}


def methods(alphas: list[float], rrf_k: float) -> dict[str, Fuse]:
    """Every method as a function of one question's (dense, bm25) lists to its top 5."""
    table: dict[str, Fuse] = {"bm25": lambda d, b: b[:K], "dense": lambda d, b: d[:K],
                              "rrf": lambda d, b: reciprocal_rank_fusion([[i for i, _ in b], [i for i, _ in d]],
                                                                         rrf_k, K)}
    for alpha in alphas:
        table[f"convex@{alpha:g}"] = lambda d, b, a=alpha: convex_fusion(d, b, a, K)
    return table


def evaluate(fuse: Fuse, rows: list[int], dense: list[Hits], bm25: list[Hits], examples: list[QAExample],
             passages: list[Passage]) -> dict[str, float]:
    """recall@1/@5 of one method over the questions at positions ``rows``."""
    top = [[i for i, _ in fuse(dense[r], bm25[r])] for r in rows]
    return recall(top, [examples[r] for r in rows], passages)


def best_alpha(scores: dict[str, dict[str, float]], alphas: list[float]) -> float:
    """The alpha of the highest recall@1 + recall@5 on the tuning split; the first of equals."""
    return max(alphas, key=lambda a: (scores[f"convex@{a:g}"]["recall_at_1"] + scores[f"convex@{a:g}"]["recall_at_5"],
                                      -alphas.index(a)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=float, default=0.05, help="spacing of the alpha grid over [0, 1]")
    parser.add_argument("--rrf-k", type=float, default=HybridConfig().rrf_k, help="RRF's fusion constant")
    parser.add_argument("--depth", type=int, default=HybridConfig().depth, help="passages taken from each ranking before fusing")
    parser.add_argument("--cache-dir", default=".cache", help="index cache (reused across runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "fusion.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    passages = builtin_nq_corpus()
    examples = NQOpenDataset(name="nq", path="builtin").load()
    tuning = [i for i, e in enumerate(examples) if in_tuning_split(e.id)]
    split = {"tuning": tuning, "test": sorted(set(range(len(examples))) - set(tuning))}
    questions = [e.question for e in examples]
    started = time.perf_counter()
    bm25 = ranked(BM25Config(), passages, questions, args.depth, args.cache_dir)
    dense = ranked(DenseConfig(), passages, questions, args.depth, args.cache_dir)
    search_s = time.perf_counter() - started
    alphas = [round(i * args.step, 4) for i in range(int(round(1 / args.step)) + 1)]
    results = {name: {side: evaluate(fuse, rows, dense, bm25, examples, passages) for side, rows in split.items()}
               for name, fuse in methods(alphas, args.rrf_k).items()}
    alpha = best_alpha({name: r["tuning"] for name, r in results.items()}, alphas)
    res = {"benchmark": "fusion", "command": " ".join([Path(sys.executable).name, *sys.argv]),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_passages": len(passages),
           "n_questions": {side: len(rows) for side, rows in split.items()}, "tuning_share": TUNING_SHARE,
           "depth": args.depth, "rrf_k": args.rrf_k, "alphas": alphas, "chosen_alpha": alpha,
           "search_s": round(search_s, 1), "methods": results}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    report(res)
    print(f"wrote {args.out}")
    return 0


def report(res: dict) -> None:
    """The table: every method's recall@1/@5 on both splits, the chosen alpha marked."""
    n = res["n_questions"]
    print(f"built-in NQ: {n['tuning']} tuning / {n['test']} test questions, {res['n_passages']} passages, "
          f"depth {res['depth']}, rrf_k {res['rrf_k']:g}; chosen alpha {res['chosen_alpha']:g}")
    print(f"{'method':<14}{'tune r@1':>10}{'tune r@5':>10}{'test r@1':>10}{'test r@5':>10}")
    for name, r in res["methods"].items():
        mark = "  <- chosen" if name == f"convex@{res['chosen_alpha']:g}" else ""
        print(f"{name:<14}{r['tuning']['recall_at_1']:>10.4f}{r['tuning']['recall_at_5']:>10.4f}"
              f"{r['test']['recall_at_1']:>10.4f}{r['test']['recall_at_5']:>10.4f}{mark}")


if __name__ == "__main__":
    sys.exit(main())
