"""The shards of a big BM25 index built as Ray tasks, one per shard, across the cluster's CPUs.

Each shard is an independent bm25s index (``slm_ray.retrieval.bm25``), so they build in parallel:
a task per missing shard, asking Ray for one CPU and the memory one shard's build takes. They run
from the driver before the index task (a sweep's prepare stage, ``slm-ray index``), for the same
reason as the dense encoding (``ray_encode``): tasks started inside that task, which holds every
CPU of a node, would wait for CPUs forever on a one-node cluster. The index task then finds every
shard in ``<key>.partial/`` and only links them. Each shard is written atomically, so a killed run
keeps the shards that finished. ``cache_dir`` must be visible to every node that builds a shard
(a shared file system on a multi-node cluster). ray is imported inside functions.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from slm_ray.logs import STEP
from slm_ray.retrieval.base import shards_done_text

log = logging.getLogger("slm_ray.retrieval")

#: Peak memory of a shard's build per passage: 3,872 MB for 500,000 synthetic 100-word passages
#: (bench/bench_scale.py), rounded up. Ray's ``memory`` resource keeps a node from starting more
#: shard builds than it holds.
BUILD_BYTES_PER_PASSAGE = 8 * 1024
#: Seconds to wait for the other shard tasks to be cancelled once one has failed.
CANCEL_WAIT_S = 30.0


def bm25_part(retriever_cfg: Any) -> Any | None:
    """The BM25 settings of a retriever: its own (bm25), its BM25 part's (hybrid), else None."""
    if retriever_cfg.type == "bm25":
        return retriever_cfg
    return getattr(retriever_cfg, "bm25", None) if retriever_cfg.type == "hybrid" else None


def wants_ray_shards(retriever_cfg: Any, passages: Sequence[Any], cache_dir: str | Path) -> bool:
    """Whether the BM25 index of ``retriever_cfg`` (or its BM25 part) has several shards and is not
    cached yet (not verified here: the locked build checks it)."""
    from slm_ray.retrieval.base import index_key
    from slm_ray.retrieval.bm25 import shard_bounds

    config = bm25_part(retriever_cfg)
    if config is None or len(shard_bounds(len(passages), config.shard_size)) < 2:
        return False
    return not (Path(cache_dir) / "indexes" / index_key(config, passages)).is_dir()


def _build_one(config_data: dict[str, Any], passages: Sequence[Any], work: str, number: int) -> int:
    """The body of a shard task."""
    from slm_ray.config import BM25Config
    from slm_ray.logs import setup_actor_logging
    from slm_ray.retrieval.bm25 import BM25Retriever

    setup_actor_logging("prepare")
    BM25Retriever(BM25Config.model_validate(config_data), passages).build_shard(number, Path(work))
    return number


def build_shards_with_ray(retriever_cfg: Any, passages: Sequence[Any], cache_dir: str | Path,
                          runtime_env: dict[str, Any] | None = None, index_store: str | None = None,
                          echo: Callable[[str], None] | None = None) -> int:
    """From a driver connected to Ray: the missing shards of ``retriever_cfg``'s BM25 index (or its
    BM25 part's), one task each, when it has several and is neither cached nor complete in
    ``index_store``. One line per finished shard with the time left; returns how many were built."""
    import ray

    from slm_ray.retrieval.base import PARTIAL_SUFFIX, index_key
    from slm_ray.retrieval.bm25 import BM25Retriever
    from slm_ray.retrieval.index_store import holds_complete

    if not wants_ray_shards(retriever_cfg, passages, cache_dir):
        return 0
    config = bm25_part(retriever_cfg)
    retriever = BM25Retriever(config, passages)
    folder = Path(cache_dir) / "indexes" / index_key(config, passages)
    if holds_complete(index_store, folder.name):
        return 0
    work = folder.with_name(folder.name + PARTIAL_SUFFIX)
    missing = retriever.missing_shards(work, tidy=False)  # tidying is the locked build's: another may be writing
    if not missing:
        return 0
    say = echo or (lambda text: log.info("%s", text, extra=STEP))
    largest = max((stop - start for _, start, stop in missing), default=1)
    options: dict[str, Any] = {"num_cpus": 1, "max_retries": 1, "memory": _memory_request(largest)}
    if runtime_env:
        options["runtime_env"] = runtime_env
    passages_ref = ray.put(passages)  # a passage store pickles as its folder: each task maps it again
    task = ray.remote(_build_one).options(**options)
    waiting = [task.remote(config.model_dump(by_alias=True), passages_ref, str(work), number)
               for number, _, _ in missing]
    say(f"bm25: building {len(missing)} of {len(retriever.bounds)} shards as Ray tasks "
        f"({options['memory'] / 2**30:.1f} GB each)")
    started = time.perf_counter()
    for built in range(1, len(missing) + 1):
        done, waiting = ray.wait(waiting, num_returns=1)
        try:
            number = ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:  # the shard's own error, as one line; the others stop
            for ref in waiting:
                ray.cancel(ref)
            # until the cancellations are answered: a Ray shut down with one in flight ends this
            # process as the answer comes in ("The core worker has already been shutdown")
            if waiting:
                ray.wait(waiting, num_returns=len(waiting), timeout=CANCEL_WAIT_S)
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
        say(f"bm25 shard {number} indexed: {shards_done_text(built, len(missing), started)}")
    return len(missing)


def _memory_request(passages: int) -> int:
    """Ray ``memory`` for one shard's build, at most what the largest node offers (else it could
    never be scheduled)."""
    import ray

    offered = max((n["Resources"].get("memory", 0) for n in ray.nodes() if n.get("Alive")), default=0)
    wanted = passages * BUILD_BYTES_PER_PASSAGE
    return int(min(wanted, offered)) if offered else wanted
