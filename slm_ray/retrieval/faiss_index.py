"""FAISS index construction, query-time settings and memory-mapped loading for the dense retriever.

One place that turns a ``DenseConfig`` and an embedding matrix into a faiss index, so that the
retriever and the scale benchmark (``bench/scale_dense.py``) build exactly the same thing.
faiss is imported inside functions: ``import slm_ray`` stays light.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from slm_ray.errors import ConfigError

log = logging.getLogger("slm_ray.retrieval")

#: k-means wants about this many training points per centroid (faiss warns below 39).
POINTS_PER_CENTROID = 39
#: Settings only an ivfpq index uses: left out of the cache key of the other index types, so
#: their indexes keep the key they had before these settings existed.
IVFPQ_KEYS = ("pq_m", "pq_nbits", "train_size", "train_seed", "rerank", "rerank_factor")


def effective_nlist(requested: int, n_train: int) -> int:
    """``nlist`` lowered to what ``n_train`` vectors can train (~39 per list)."""
    return max(1, min(requested, n_train // POINTS_PER_CENTROID))


def effective_pq_nbits(requested: int, n_train: int) -> int:
    """``pq_nbits`` lowered so that each sub-quantizer's 2**bits centroids get ~39 training points."""
    fits = int(math.floor(math.log2(max(2, n_train // POINTS_PER_CENTROID))))
    return max(1, min(requested, fits))


def check_pq_m(pq_m: int, dim: int) -> None:
    """PQ splits a vector into ``pq_m`` equal parts: refuse a ``pq_m`` that does not divide ``dim``."""
    if dim % pq_m:
        divisors = [d for d in range(1, dim + 1) if dim % d == 0 and 4 <= dim // d <= 16]
        raise ConfigError(f"retriever.pq_m={pq_m} does not divide the embedding dimension {dim} "
                          f"(valid: a divisor of {dim}, e.g. {', '.join(map(str, divisors))})")


def training_sample(embeddings: Any, train_size: int, seed: int) -> Any:
    """Up to ``train_size`` rows drawn without replacement by ``seed`` (sorted, so reads stay sequential)."""
    import numpy as np

    n = embeddings.shape[0]
    if n <= train_size:
        return embeddings
    rows = np.sort(np.random.default_rng(seed).choice(n, size=train_size, replace=False))
    return np.ascontiguousarray(embeddings[rows])


def ivfpq_factory(config: Any, dim: int, n_train: int) -> str:
    """The index_factory string of an ivfpq index: ``IVF<nlist>,PQ<m>x<bits>np[,RFlat]``."""
    check_pq_m(config.pq_m, dim)
    nlist = effective_nlist(config.nlist, n_train)
    nbits = effective_pq_nbits(config.pq_nbits, n_train)
    # "np": no polysemous training (a code reordering only Hamming-filtered search uses; minutes per build).
    return f"IVF{nlist},PQ{config.pq_m}x{nbits}np" + (",RFlat" if config.rerank else "")


def build_index(config: Any, embeddings: Any) -> Any:
    """A trained, filled faiss index of ``config.index_type`` over normalised ``embeddings``
    (inner product = cosine). Query-time settings are applied by ``apply_query_settings``."""
    import faiss

    n, dim = embeddings.shape
    if config.index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif config.index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
    elif config.index_type == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, effective_nlist(config.nlist, n),
                                   faiss.METRIC_INNER_PRODUCT)
        index.train(embeddings)
    elif config.index_type == "ivfpq":
        sample = training_sample(embeddings, config.train_size, config.train_seed)
        factory = ivfpq_factory(config, dim, len(sample))
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
        log.info("dense index: training %s on %d of %d vectors", factory, len(sample), n)
        index.train(sample)
    else:
        raise ConfigError(f"retriever.index_type={config.index_type!r} is not an index type "
                          "(valid: flat, ivf, hnsw, ivfpq)")
    index.add(embeddings)
    return index


def apply_query_settings(index: Any, config: Any) -> None:
    """Set nprobe (ivf, ivfpq) and the re-ranking depth (ivfpq with rerank) on a CPU index."""
    import faiss

    if config.index_type not in ("ivf", "ivfpq"):
        return
    faiss.extract_index_ivf(index).nprobe = config.nprobe
    if isinstance(index, faiss.IndexRefine):
        index.k_factor = float(config.rerank_factor)


def write_index(index: Any, path: Path) -> None:
    """Write ``index`` to ``path`` through a temporary name, so a crash leaves no partial index."""
    import faiss

    partial = path.with_name(path.name + ".partial")
    faiss.write_index(index, str(partial))
    partial.replace(path)


def read_index(path: Path, mmap: bool = True) -> Any:
    """Read an index written by ``write_index``; with ``mmap`` its vectors, codes and inverted lists
    stay in the file's pages (``IO_FLAG_MMAP_IFC``, faiss >= 1.10: Flat, IVF, IVF-PQ, the refine
    vectors and HNSW's storage). A retriever actor's private memory is then a small part of the
    index, the OS pages in what queries touch, and actors on one node share those pages."""
    import faiss

    return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC if mmap else 0)
