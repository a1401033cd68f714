"""The retriever interface and the on-disk index cache every retriever shares.

An index is built once per (corpus content, retriever settings that shape the index) and kept
under ``<cache_dir>/indexes/``; ``k`` is a query-time setting and does not change the key. With
``experiment.index_store`` (``s3://...``) an index missing there is downloaded from S3 when a complete
upload of it exists, and one built here is uploaded (``slm_ray.retrieval.index_store``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from slm_ray.store.cache_entry import load_or_build
from slm_ray.data.base import Passage
from slm_ray.data.corpus import corpus_fingerprint
from slm_ray.retrieval.index_store import IndexStore, clear_folder
from slm_ray.store.io import atomic_write_json

log = logging.getLogger("slm_ray.retrieval")

#: Beside an index folder, the work folder of its build (``<key>.partial/``): kept across a kill.
PARTIAL_SUFFIX = ".partial"
#: Settings of how an index is built (where its embeddings are encoded) that change neither what it
#: holds nor its answers.
BUILD_ONLY_KEYS = frozenset({"ray_encode_min_passages", "ray_encode_shard_size"})
#: Settings that change how queries run but not what the index holds.
QUERY_TIME_KEYS = frozenset({"k", "name", "nprobe", "rerank_factor", "encode_batch_size", "device"}) | BUILD_ONLY_KEYS



def shards_done_text(done: int, total: int, started: float) -> str:
    """``3 of 10 built in 00:42, about 01:38 left``: a shard build's progress, the time left being the
    mean shard so far times the shards left (``started``: a ``time.perf_counter()`` reading)."""
    from tqdm import tqdm

    elapsed = time.perf_counter() - started
    left = elapsed / max(done, 1) * (total - done)
    return f"{done} of {total} built in {tqdm.format_interval(elapsed)}, about {tqdm.format_interval(left)} left"

@dataclass(frozen=True)
class RetrievedPassage:
    passage: Passage
    score: float


def passage_text(passage: Passage) -> str:
    """What gets indexed: the title helps both BM25 and embeddings find the right article."""
    return f"{passage.title}\n{passage.text}" if passage.title else passage.text


class BaseRetriever(ABC):
    """Search over a fixed list of passages. Subclasses implement build/save/load/search."""

    def __init__(self, config: Any, passages: Sequence[Passage]):
        self.config = config
        self.passages = passages

    @abstractmethod
    def build(self) -> None:
        """Index ``self.passages`` from scratch."""

    @abstractmethod
    def save(self, folder: Path) -> None:
        """Write the index into an existing, empty folder."""

    def build_into(self, staging: Path, work: Path) -> None:
        """Build the index and write it into ``staging`` (a cache build). ``work`` is a folder that
        outlives a killed build, where a retriever that builds in parts keeps the finished ones
        (``BM25Retriever``); it is removed once the index is in place. By default: build, save."""
        self.build()
        self.save(staging)

    @abstractmethod
    def load(self, folder: Path) -> None:
        """Read an index written by ``save``."""

    @abstractmethod
    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        """For each query, up to ``k`` (passage index, score) pairs, best first."""

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[RetrievedPassage]]:
        """Top-``k`` passages for each query (``k`` defaults to the configured one)."""
        if not queries:
            return []
        k = min(k or self.config.k, len(self.passages))
        return [
            [RetrievedPassage(self.passages[i], float(score)) for i, score in hits]
            for hits in self.search(queries, k)
        ]

    @classmethod
    def index_settings(cls, config: Any) -> dict[str, Any]:
        """The settings that shape the index (its cache key): all but the query-time ones."""
        return {k: v for k, v in config.model_dump().items() if k not in QUERY_TIME_KEYS}

    def describe(self) -> dict[str, Any]:
        """Facts about the index for results.json (subclasses add theirs)."""
        return {"type": self.config.type, "n_passages": len(self.passages)}


#: Keys of a nested retriever's settings (the parts of a hybrid) that change neither its index nor its results.
NESTED_IGNORED_KEYS = frozenset({"k", "name", "encode_batch_size", "device"}) | BUILD_ONLY_KEYS


def index_key(retriever_cfg: Any, passages: Sequence[Passage]) -> str:
    """Folder name of the cached index: retriever type plus a hash of corpus and index settings
    (for a hybrid: its fusion settings and both parts' settings)."""
    from slm_ray.config import import_object

    settings = import_object(retriever_cfg.target).index_settings(retriever_cfg)
    settings = {k: {kk: vv for kk, vv in v.items() if kk not in NESTED_IGNORED_KEYS} if isinstance(v, dict) else v
                for k, v in settings.items()}
    settings = _without_unused_shard_size(settings, len(passages))
    blob = json.dumps({"settings": settings, "corpus": corpus_fingerprint(passages)}, sort_keys=True)
    return f"{retriever_cfg.type}-{hashlib.sha256(blob.encode()).hexdigest()[:16]}"


def _without_unused_shard_size(settings: dict[str, Any], n_passages: int) -> dict[str, Any]:
    """Drop ``shard_size`` (of the settings or a part's) where the corpus fits in one shard: one
    shard is the unsharded index whatever its size, so it keeps the key it had before shards."""
    def fits(values: dict[str, Any]) -> bool:
        return isinstance(values.get("shard_size"), int) and n_passages <= values["shard_size"]

    settings = {k: {kk: vv for kk, vv in v.items() if kk != "shard_size"} if isinstance(v, dict) and fits(v) else v
                for k, v in settings.items()}
    return {k: v for k, v in settings.items() if k != "shard_size"} if fits(settings) else settings


@dataclass(frozen=True)
class IndexOrigin:
    """Where a ready index came from: the index command's line and a sweep's prepare stage say it."""

    how: Literal["cached", "built", "downloaded"]
    #: The ``s3://`` folder it was downloaded from.
    source: str | None = None
    #: The ``s3://`` folder it was uploaded to, once there.
    uploaded_to: str | None = None

    @property
    def built(self) -> bool:
        return self.how == "built"

    @property
    def found(self) -> str:
        """``built``, ``cached`` or ``downloaded from s3://...``."""
        return f"downloaded from {self.source}" if self.how == "downloaded" else self.how

    def describe(self) -> str:
        """``found``, with `` (uploaded to s3://...)`` when it was."""
        return self.found + (f" (uploaded to {self.uploaded_to})" if self.uploaded_to else "")

    @classmethod
    def of_parts(cls, parts: Sequence["IndexOrigin"], store: str | None) -> "IndexOrigin":
        """One origin for an index made of others (a hybrid): built if one was, else downloaded if
        one was; the store folder stands for the parts' own folders."""
        how = next((h for h in ("built", "downloaded") if any(p.how == h for p in parts)), "cached")
        return cls(how, store if how == "downloaded" else None,
                   store if any(p.uploaded_to for p in parts) else None)


def build_or_load(retriever_cfg: Any, passages: Sequence[Passage], cache_dir: str | Path,
                  index_store: str | None = None) -> tuple[BaseRetriever, bool]:
    """A ready retriever, loaded from the cache when possible. Returns (retriever, built_now).

    A cached index is used only if every file matches its manifest and it loads; otherwise it is
    rebuilt (see ``slm_ray.store.cache_entry``). A new index is written to a staging folder and renamed
    into place, so an interrupted build never leaves a half-written index that a later run trusts.
    With ``index_store`` (``s3://...``), a missing index is downloaded from there when it has one
    (not built: built_now is False), and one built here is uploaded (``slm_ray.retrieval.index_store``).
    """
    retriever, origin = _cached_index(retriever_cfg, passages, cache_dir, load=True, index_store=index_store)
    return retriever, origin.built


def ensure_index(retriever_cfg: Any, passages: Sequence[Passage], cache_dir: str | Path,
                 index_store: str | None = None) -> bool:
    """Build the cached index where it is missing or unsound, without loading a sound one (a
    sweep's prepare stage); True when built now (a download from ``index_store`` is not a build)."""
    return ensure_index_origin(retriever_cfg, passages, cache_dir, index_store).built


def ensure_index_origin(retriever_cfg: Any, passages: Sequence[Passage], cache_dir: str | Path,
                        index_store: str | None = None) -> IndexOrigin:
    """``ensure_index``, saying where the index came from. With ``index_store``, a cached index the
    store lacks is uploaded too: one built before the setting was set reaches the cluster."""
    return _cached_index(retriever_cfg, passages, cache_dir, load=False, index_store=index_store)[1]


def _cached_index(retriever_cfg: Any, passages: Sequence[Passage], cache_dir: str | Path, load: bool,
                  index_store: str | None = None) -> tuple[BaseRetriever, IndexOrigin]:
    from slm_ray.config import import_object

    cls = import_object(retriever_cfg.target)
    if hasattr(cls, "open_cached"):  # a retriever made of other retrievers' cached indexes (hybrid)
        return cls.open_cached(retriever_cfg, passages, cache_dir, index_store=index_store)
    retriever = cls(retriever_cfg, passages)
    key = index_key(retriever_cfg, passages)
    folder = Path(cache_dir) / "indexes" / key
    store = IndexStore.of(index_store)
    downloaded: list[bool] = []

    def read(path: Path) -> None:
        started = time.perf_counter()
        retriever.load(path)
        log.info("loaded %s index from %s in %.2fs", retriever_cfg.type, path, time.perf_counter() - started)

    def build(staging: Path) -> None:
        if store is not None and _download(store, key, staging, read if load else None):
            downloaded.append(True)
            return
        started = time.perf_counter()
        retriever.build_into(staging, work)
        log.info("built %s index over %d passages in %.1fs", retriever_cfg.type, len(passages),
                 time.perf_counter() - started)
        meta = {"config": retriever_cfg.model_dump(), "n_passages": len(passages),
                "corpus": corpus_fingerprint(passages), "built_s": round(time.perf_counter() - started, 3)}
        atomic_write_json(staging / "meta.json", meta)

    work = folder.with_name(folder.name + PARTIAL_SUFFIX)
    built_now = load_or_build(folder, build, load=read if load else None, what="cached index")
    if work.exists():  # the parts of a finished build, now hard-linked into the index
        shutil.rmtree(work, ignore_errors=True)
    origin = (IndexOrigin("cached") if not built_now else
              IndexOrigin("downloaded", store.folder(key)) if downloaded and store is not None else IndexOrigin("built"))
    return retriever, _publish(store, key, folder, origin, load) if store is not None else origin


def _download(store: IndexStore, key: str, staging: Path, read: Callable[[Path], None] | None) -> bool:
    """The store's copy of ``key`` in ``staging`` (read when ``read`` is given); False when it has
    none, or its copy does not load here (then ``staging`` is emptied for the build)."""
    if not store.download(key, staging):
        return False
    if read is None:
        return True
    try:
        read(staging)
    except Exception as exc:  # a copy that passed its manifest but not this version's loader: build
        log.warning("stored copy of index %s does not load (%s: %s); building it here", store.folder(key),
                    type(exc).__name__, exc)
        clear_folder(staging)
        return False
    return True


def _publish(store: IndexStore, key: str, folder: Path, origin: IndexOrigin, load: bool) -> IndexOrigin:
    """Upload an index built here. Without ``load`` (the index command, a sweep's prepare stage) a
    cached one the store lacks is uploaded too; a run loading a cached index asks S3 nothing."""
    if origin.how == "downloaded" or (origin.how == "cached" and (load or store.marker(key) is not None)):
        return origin
    return replace(origin, uploaded_to=store.upload(key, folder))
