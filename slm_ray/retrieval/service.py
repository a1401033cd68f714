"""A retriever shared by every trial of a sweep: one Ray actor per retriever + corpus configuration.

The actor loads the corpus, builds its index once (or loads it from ``<cache_dir>/indexes/``) and
answers batched queries for all trials that use it. Answers are memoised per (query, k) and kept on
disk under ``<cache_dir>/retrievals/``, so the trials of different models that ask the same
questions are served one search, and a rerun of the sweep searches nothing it searched before.

``RetrieverService`` is a plain class (the engine wraps it with ``ray.remote``); ``RetrieverClient``
is what ``run_experiment`` gets as its ``retriever``: the same ``retrieve``/``describe`` interface,
answered by the actor. Ray is imported only by the client's methods and the actor's runtime.
"""

from __future__ import annotations

import json
import logging
import os
import time
import zlib
from pathlib import Path
from typing import Any

from slm_ray.logs import STEP
from slm_ray.retrieval.base import BUILD_ONLY_KEYS, QUERY_TIME_KEYS, RetrievedPassage

log = logging.getLogger("slm_ray.retrieval.service")

#: Settings that change neither the index nor the search results.
_NOT_RESULT_KEYS = frozenset({"k", "name", "encode_batch_size", "device"}) | BUILD_ONLY_KEYS
#: Query-time settings that do change results (e.g. nprobe of an IVF index).
_RESULT_QUERY_KEYS = QUERY_TIME_KEYS - _NOT_RESULT_KEYS
#: Ray options of a retriever actor: a killed actor is restarted (its index is loaded from the
#: cache, not rebuilt) and the calls it had not answered are sent again.
RETRIEVER_RESTARTS = {"max_restarts": 3, "max_task_retries": 3}
#: Attempts (and the pause between them) of a client call to an actor that is restarting.
CLIENT_ATTEMPTS = 5
CLIENT_RETRY_SECONDS = 1.0
#: The setting that chose the folder of the answer cache (named in a write fault's one line).
CACHE_SETTING = "experiment.cache_dir"


def service_key(cfg: Any) -> str:
    """One actor per distinct (retriever settings except k/name, corpus, cache dir)."""
    from slm_ray.store.fingerprints import stable_hash

    settings = {k: v for k, v in cfg.retriever.model_dump(by_alias=True).items() if k not in ("k", "name")}
    blob = {"retriever": settings, "corpus": cfg.corpus.model_dump(), "cache_dir": cfg.experiment.cache_dir}
    return f"{cfg.retriever.type}-{stable_hash(blob)}"


def enter_project_dir(driver_cwd: str | None) -> str:
    """Run in the driver's project folder (same machine or same layout), so relative paths agree.

    ``SLM_RAY_NODE_ROOT`` overrides it: a node-local folder, as a node without shared storage has.
    """
    root = os.environ.get("SLM_RAY_NODE_ROOT") or (driver_cwd if driver_cwd and os.path.isdir(driver_cwd) else None)
    if root:
        os.makedirs(root, exist_ok=True)
        os.chdir(root)
    return os.getcwd()


class RetrieverService:
    """The body of a retriever actor: corpus + index + memoised, disk-cached search results."""

    def __init__(self, key: str, retriever_cfg: dict[str, Any], corpus_cfg: dict[str, Any], cache_dir: str,
                 driver_cwd: str | None = None, threads: int | None = None, memory_interval_s: float = 0.5,
                 index_store: str | None = None):
        from pydantic import TypeAdapter

        from slm_ray.logs import setup_actor_logging
        from slm_ray.config import CorpusConfig, RetrieverConfig
        from slm_ray.data.corpus import load_corpus
        from slm_ray.evaluation.memory import MemoryMonitor
        from slm_ray.retrieval.base import index_key

        setup_actor_logging(f"retriever-{key}")
        enter_project_dir(driver_cwd)
        if threads:
            import torch

            torch.set_num_threads(max(1, int(threads)))
        self.key = key
        self.config = TypeAdapter(RetrieverConfig).validate_python(retriever_cfg)
        self.corpus_config = CorpusConfig.model_validate(corpus_cfg)
        self.cache_dir = Path(cache_dir)
        self.index_store = index_store
        self.monitor = MemoryMonitor(interval_s=memory_interval_s).start()
        started = time.perf_counter()
        with self.monitor.phase("retriever"):
            self.passages = load_corpus(self.corpus_config, self.cache_dir)
        self.corpus_seconds = time.perf_counter() - started
        self.index_key = index_key(self.config, self.passages)
        query_settings = {k: v for k, v in self.config.model_dump().items() if k in _RESULT_QUERY_KEYS}
        from slm_ray.store.fingerprints import stable_hash

        self._cache_stem = f"{self.index_key}-{stable_hash(query_settings, 8)}"
        self._retriever = None
        self.built_now: bool | None = None
        self.index_seconds = 0.0
        self._memo: dict[int, dict[str, list[tuple[int, float]]]] = {}
        self.queries_searched = 0
        self.queries_from_cache = 0
        self.calls = 0
        self.node_id = _node_id()

    # -- index ---------------------------------------------------------------------------------

    def warmup(self) -> dict[str, Any]:
        """Load or build the index now (the engine calls this right after creating the actor)."""
        self._ensure_index()
        return self.describe()

    def _ensure_index(self) -> None:
        if self._retriever is not None:
            return
        from slm_ray.retrieval.base import build_or_load

        started = time.perf_counter()
        with self.monitor.phase("retriever"):
            self._retriever, self.built_now = build_or_load(self.config, self.passages, self.cache_dir,
                                                                self.index_store)
        self.index_seconds = time.perf_counter() - started
        log.info("retriever %s: index %s %s in %.1fs", self.key, self.index_key,
                 "built" if self.built_now else "loaded", self.index_seconds, extra=STEP)

    # -- queries -------------------------------------------------------------------------------

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[RetrievedPassage]]:
        """Top-``k`` passages per query: from memory, else the disk cache, else one batched search."""
        self.calls += 1
        k = min(k or self.config.k, len(self.passages))
        memo = self._memo_for(k)
        missing = [q for q in dict.fromkeys(queries) if q not in memo]
        self.queries_from_cache += len(queries) - len(missing)
        if missing:
            self._ensure_index()
            with self.monitor.phase("retriever"):
                hits = self._retriever.search(missing, k)
            rows = {q: [(int(i), float(s)) for i, s in h] for q, h in zip(missing, hits)}
            self._append_cache(k, rows)
            memo.update(rows)
            self.queries_searched += len(missing)
        return [[RetrievedPassage(self.passages[i], s) for i, s in memo[q]] for q in queries]

    def _cache_path(self, k: int) -> Path:
        return self.cache_dir / "retrievals" / f"{self._cache_stem}-k{k}.jsonl"

    def _memo_for(self, k: int) -> dict[str, list[tuple[int, float]]]:
        if k not in self._memo:
            self._memo[k] = self._read_cache(k)
        return self._memo[k]

    def _read_cache(self, k: int) -> dict[str, list[tuple[int, float]]]:
        """Answers saved by earlier runs. Each line carries a CRC-32 of its content: a torn, foreign or
        edited line is dropped (and the file cleaned), and its question searched again."""
        path = self._cache_path(k)
        if not path.is_file():
            return {}
        rows: dict[str, list[tuple[int, float]]] = {}
        dropped = 0
        text = path.read_text(encoding="utf-8", errors="replace")
        for line in text.splitlines():
            try:
                record = json.loads(line)
                hits = [(int(i), float(s)) for i, s in record["hits"]]
                if record["crc"] != _line_crc(str(record["q"]), hits):
                    raise ValueError("checksum mismatch")
                if any(not 0 <= i < len(self.passages) for i, _ in hits):
                    raise ValueError("passage index out of range")
                rows[str(record["q"])] = hits
            except (ValueError, KeyError, TypeError):
                dropped += 1
        if dropped or (text and not text.endswith("\n")):
            from slm_ray.store.io import atomic_write_text

            if dropped:
                log.warning("retriever %s: dropped %d damaged cached answer(s) in %s; they are searched again",
                            self.key, dropped, path)
            from slm_ray.errors import writes_to

            with writes_to(path.parent, CACHE_SETTING):
                atomic_write_text(path, "".join(_cache_line(q, h) for q, h in rows.items()))
        log.info("retriever %s: %d cached answers for k=%d in %s", self.key, len(rows), k, path)
        return rows

    def _append_cache(self, k: int, rows: dict[str, list[tuple[int, float]]]) -> None:
        """Append whole lines in one write: a crash leaves at most one torn line, dropped on read."""
        from slm_ray.errors import writes_to

        path = self._cache_path(k)
        text = "".join(_cache_line(q, h) for q, h in rows.items())
        with writes_to(path.parent, CACHE_SETTING):
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "a", encoding="utf-8") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())

    # -- reporting -----------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """What results.json records as retriever_info: the index, the actor, its memory so far."""
        info = self._retriever.describe() if self._retriever is not None else {
            "type": self.config.type, "n_passages": len(self.passages)}
        return {**info, "shared": True, "service": self.key, "index_key": self.index_key,
                "index_built_now": self.built_now, "index_seconds": round(self.index_seconds, 3),
                "node_id": self.node_id, "memory": self._memory()}

    def stats(self) -> dict[str, Any]:
        """describe() plus the query counters, for sweep_stats.json."""
        return {**self.describe(), "name": self.config.name, "corpus": self.corpus_config.name,
                "calls": self.calls, "queries_searched": self.queries_searched,
                "queries_from_cache": self.queries_from_cache, "corpus_seconds": round(self.corpus_seconds, 3),
                "pid": os.getpid()}

    def _memory(self) -> dict[str, Any]:
        summary = self.monitor.summary()
        component = summary["components"].get("retriever", {})
        return {"peak_rss_mb": component.get("peak_rss_mb"), "peak_gpu_mb": component.get("peak_gpu_mb"),
                "torch_peak_allocated_mb": component.get("torch_peak_allocated_mb"),
                "process_peak_rss_mb": summary["process"]["peak_rss_mb"],
                "process_peak_gpu_mb": summary["process"]["peak_gpu_mb"]}


class RetrieverClient:
    """What a trial passes to ``run_experiment``: ``retrieve``/``describe`` answered by the shared actor.

    Holds only the actor's name, so it pickles anywhere; the handle is looked up on first use.
    """

    def __init__(self, actor_name: str, namespace: str | None = None):
        self.actor_name = actor_name
        self.namespace = namespace
        self._handle = None

    def _actor(self) -> Any:
        if self._handle is None:
            import ray

            self._handle = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._handle

    def _call(self, method: str, *args: Any) -> Any:
        """Call the actor; while it is being restarted (or was just recreated), look it up and try again."""
        import ray

        for attempt in range(1, CLIENT_ATTEMPTS + 1):
            try:
                try:
                    handle = self._actor()
                except ValueError as exc:  # no actor of that name (yet): between death and re-creation
                    raise ray.exceptions.ActorUnavailableError(str(exc), None) from None
                return ray.get(getattr(handle, method).remote(*args))
            except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
                if attempt == CLIENT_ATTEMPTS:
                    raise
                log.warning("retriever actor %s unavailable (%s); retrying in %.0fs (%d/%d)", self.actor_name,
                            type(exc).__name__, CLIENT_RETRY_SECONDS, attempt, CLIENT_ATTEMPTS - 1)
                self._handle = None
                time.sleep(CLIENT_RETRY_SECONDS)
        raise AssertionError("unreachable")

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[RetrievedPassage]]:
        return self._call("retrieve", list(queries), k)

    def describe(self) -> dict[str, Any]:
        return {**self._call("describe"), "actor": self.actor_name}

    def __getstate__(self) -> dict[str, Any]:
        return {"actor_name": self.actor_name, "namespace": self.namespace, "_handle": None}


def _line_crc(query: str, hits: list[tuple[int, float]]) -> int:
    return zlib.crc32(json.dumps([query, hits], ensure_ascii=False).encode("utf-8"))


def _cache_line(query: str, hits: list[tuple[int, float]]) -> str:
    hits = [(int(i), float(s)) for i, s in hits]
    return json.dumps({"q": query, "hits": hits, "crc": _line_crc(query, hits)}, ensure_ascii=False) + "\n"


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # outside Ray (tests of the plain class)
        return None
