"""Scale measurement of the dense retriever's IVF-PQ index (project issue 18: Wikipedia's 21M passages).

``measure_ivfpq(n_passages)`` builds the index with the project's own code
(``slm_ray.retrieval.faiss_index.build_index``, what ``DenseRetriever.build`` calls), writes it,
and measures build seconds, bytes on disk, the RSS of a fresh process that memory-maps it
(``read_index``, what ``DenseRetriever.load`` calls), queries per second, and recall@10 against
exact inner-product search over the same vectors.

Vectors come from a stub "encoder": a synthetic topic model projected to ``dim`` dimensions. Each
passage mixes 1-3 of ``n_topics`` topics (random unit directions) with Gamma(1) weights (an
unnormalised Dirichlet), plus Gaussian noise, then is normalised, as sentence embeddings are. Why
not plain Gaussian vectors: in 384 dimensions their nearest neighbours are barely nearer than any
other vector, so recall would measure noise; real embeddings lie near a low-dimensional structure
of topics, and so do these. The noise puts a query's mean cosine to its nearest neighbour at ~0.73
(``nn_cosine_mean``); all-MiniLM-L6-v2 passages of the built-in corpus have 0.53 to their nearest
other passage (3,600 passages: a sparse sample; Wikipedia's 21M are denser). Real embeddings are
harder for PQ than these (tests/test_dense_ivfpq.py), so check recall on your corpus's vectors.
Speed does not depend on what the vectors mean, so the real encoder is not needed here.

    python bench/scale_dense.py --n 100000 [--nlist 1024 --nprobe 32 --pq-m 48 --rerank-factor 4] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

N_QUERIES = 1000
GRID_NPROBE = (8, 16, 32, 64)
GRID_RERANK = (1, 4, 8)  # 1: the PQ ranking alone (only the top 10 re-ranked)
K = 10
#: Gaussian noise per dimension relative to the topic signal (see the module docstring).
NOISE = 0.035


def synthetic_embeddings(n: int, dim: int, seed: int, n_topics: int | None = None,
                         chunk: int = 65536) -> np.ndarray:
    """``n`` normalised float32 vectors from the topic-mixture stub encoder (module docstring)."""
    rng = np.random.default_rng(seed)
    n_topics = n_topics or max(64, n // 200)
    topics = rng.standard_normal((n_topics, dim)).astype(np.float32)
    topics /= np.linalg.norm(topics, axis=1, keepdims=True)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        vec = rng.standard_normal((m, dim)).astype(np.float32) * NOISE
        for slot in range(3):
            weight = rng.gamma(1.0, size=m).astype(np.float32)
            if slot:
                weight *= rng.random(m) < 0.5  # 1-3 topics per passage
            vec += weight[:, None] * topics[rng.integers(0, n_topics, size=m)]
        out[start:start + m] = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    return out


def exact_top_k(corpus: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Ground truth: exact inner-product top-k ids (faiss Flat, the project's ``flat`` index)."""
    import faiss

    flat = faiss.IndexFlatIP(corpus.shape[1])
    flat.add(corpus)
    return flat.search(queries, k)[1]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top-k that the approximate top-k holds."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth)]))


_ACTOR = r"""
import json, sys, time
import numpy as np
from types import SimpleNamespace
from slm_ray.retrieval.faiss_index import apply_query_settings, read_index

def status():
    return {l.split(":")[0]: int(l.split()[1]) // 1024 for l in open("/proc/self/status")
            if l.startswith(("VmRSS", "RssAnon", "RssFile"))}

path, cfg, queries_path, k = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], int(sys.argv[4])
queries = np.load(queries_path)
before = status()
index = read_index(path)
apply_query_settings(index, SimpleNamespace(**cfg))
loaded = status()
started = time.perf_counter()
_, ids = index.search(queries, k)
seconds = time.perf_counter() - started
np.save(queries_path + ".ids.npy", ids)
print(json.dumps({"before": before, "loaded": loaded, "searched": status(), "search_s": seconds}))
"""


def _fresh_process_load(path: Path, config: Any, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Memory-map the index in a new process (a retriever actor's start), search, report its memory."""
    with tempfile.TemporaryDirectory() as tmp:
        qpath = str(Path(tmp) / "queries.npy")
        np.save(qpath, queries)
        query = json.dumps({key: getattr(config, key) for key in ("index_type", "nprobe", "rerank_factor")})
        out = subprocess.run([sys.executable, "-c", _ACTOR, str(path), query, qpath, str(k)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        result = json.loads(out.stdout.strip().splitlines()[-1])
        result["ids"] = np.load(qpath + ".ids.npy")
    return result


def measure_ivfpq(n_passages: int, dim: int = 384, seed: int = 0, **settings: Any) -> dict[str, Any]:
    """Build, write, memory-map and query the project's IVF-PQ index over ``n_passages`` synthetic
    vectors; ``settings`` override ``DenseConfig`` fields (nlist, nprobe, pq_m, rerank_factor, ...)."""
    import faiss

    from slm_ray.config import DenseConfig
    from slm_ray.retrieval.faiss_index import apply_query_settings, build_index, write_index

    config = DenseConfig(index_type="ivfpq", device="cpu", **settings)
    started = time.perf_counter()
    data = synthetic_embeddings(n_passages + N_QUERIES, dim, seed)
    corpus, queries = data[:n_passages], data[n_passages:]
    generate_s = time.perf_counter() - started

    started = time.perf_counter()
    truth = exact_top_k(corpus, queries, K)
    exact_s = time.perf_counter() - started
    nearest = truth[:, 0]  # the nearest neighbour's cosine: how structured the vectors are
    nn_cos = float(np.mean(np.sum(corpus[nearest] * queries, axis=1)))

    started = time.perf_counter()
    index = build_index(config, corpus)
    build_s = time.perf_counter() - started
    ivf = faiss.extract_index_ivf(index)
    grid = []  # the query-time trade-off, on the built index (in memory)
    for nprobe in GRID_NPROBE:
        for factor in GRID_RERANK:
            apply_query_settings(index, config.model_copy(update={"nprobe": nprobe, "rerank_factor": factor}))
            started = time.perf_counter()
            found = index.search(queries, K)[1]
            grid.append({"nprobe": nprobe, "rerank_factor": factor, "recall_at_10": round(recall_at_k(found, truth), 4),
                         "queries_per_s": round(N_QUERIES / (time.perf_counter() - started), 1)})
    apply_query_settings(index, config)
    with tempfile.TemporaryDirectory(dir=os.environ.get("SCALE_DENSE_TMP")) as tmp:
        path = Path(tmp) / "index.faiss"
        write_index(index, path)
        index_bytes = path.stat().st_size
        del index
        actor = _fresh_process_load(path, config, queries, K)
    return {
        "n_passages": n_passages, "dim": dim, "seed": seed, "cpu": _cpu(), "faiss": faiss.__version__,
        "threads": faiss.omp_get_max_threads(),
        "settings": {k: v for k, v in config.model_dump().items()
                     if k in ("nlist", "nprobe", "pq_m", "pq_nbits", "train_size", "rerank", "rerank_factor")},
        "effective_nlist": ivf.nlist, "pq_code_bytes": ivf.code_size,
        "nn_cosine_mean": round(nn_cos, 3), "generate_s": round(generate_s, 1),
        "ivfpq_build_s": round(build_s, 1), "ivfpq_index_bytes": index_bytes,
        "vectors_bytes": corpus.nbytes,
        # RSS of a fresh process right after the memory-mapped load. Queries then fault in the pages
        # they touch: file-backed page cache, shared by every actor on the node and reclaimable,
        # while private memory (RssAnon) stays flat: both in actor_rss.
        "ivfpq_actor_rss_mb": actor["loaded"]["VmRSS"],
        "actor_rss": {"before_load_mb": actor["before"], "after_load_mb": actor["loaded"],
                      "after_queries_mb": actor["searched"]},
        "ivfpq_queries_per_s": round(N_QUERIES / actor["search_s"], 1),
        "exact_queries_per_s": round(N_QUERIES / exact_s, 1),
        "ivfpq_recall_at_10": round(recall_at_k(actor["ids"], truth), 4),
        "query_time_grid": grid,
    }


def _cpu() -> str:
    """The CPU model and core count, for reading the numbers."""
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        name = "unknown"
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    simd = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "no AVX2"
    return f"{name}, {os.cpu_count()} cores, {simd}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--seed", type=int, default=0)
    for name in ("nlist", "nprobe", "pq_m", "pq_nbits", "train_size", "rerank_factor"):
        parser.add_argument("--" + name.replace("_", "-"), type=int)
    parser.add_argument("--no-rerank", action="store_true")
    parser.add_argument("--out", type=Path, help="also write the result here (e.g. bench/results/scale_dense_1m.json)")
    args = parser.parse_args()
    settings = {k: v for k, v in vars(args).items()
                if k not in ("n", "dim", "seed", "no_rerank", "out") and v is not None}
    if args.no_rerank:
        settings["rerank"] = False
    result = measure_ivfpq(args.n, args.dim, args.seed, **settings)
    print(json.dumps(result, indent=2))
    if args.out:
        from slm_ray.store.io import atomic_write_json

        atomic_write_json(args.out, result)


if __name__ == "__main__":
    main()
