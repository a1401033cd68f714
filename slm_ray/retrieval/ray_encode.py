"""Encoding a big corpus with Ray Data: an actor pool of encoders writes embedding shards.

Wikipedia's 21M passages take hours to embed; spread over a cluster's GPUs (or CPUs) with
``map_batches`` over a pool of actors, each of which loads the encoder once. Every shard is a
``.npy`` file written under a temporary name and renamed, so a rerun after a crash encodes only the
shards that are missing. ``shard_dir`` must be visible to every node that runs an encoder (a
shared filesystem on a multi-node cluster). ray is imported inside functions.

A dense build over a corpus of at least ``retriever.ray_encode_min_passages`` keeps its shards in
``<cache_dir>/indexes/<key>.partial/embeddings/`` (``embeddings_dir``), which outlives a killed
build as BM25's finished shards do, and is removed with the rest of ``<key>.partial`` once the
index is in the cache. A sweep's prepare stage and ``slm-ray index`` encode from the driver
(``encode_for_index``) before the build, which then finds every shard and only builds FAISS: an
encoder actor started from inside the prepare task, which holds all CPUs of its node, would wait
for CPUs forever.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_ray.logs import STEP
from slm_ray.retrieval.base import shards_done_text

log = logging.getLogger("slm_ray.retrieval")

#: The folder of the embedding shards inside an index's build folder (``<key>.partial/``).
EMBEDDINGS_FOLDER = "embeddings"
#: Beside the shards: the shard size and corpus size they were cut for.
LAYOUT_FILE = "layout.json"


def shard_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"shard-{shard:06d}.npy"


def _save_shard(path: Path, embeddings: Any) -> None:
    """Write one shard through a temporary name: a shard that exists is complete."""
    import numpy as np

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.save(handle, embeddings)
    partial.replace(path)


def _use_layout(shard_dir: Path, n_texts: int, shard_size: int) -> None:
    """Record how the corpus is cut into shards; shards cut another way (another shard size or
    corpus) would be read as the wrong passages, so they are removed first."""
    layout = {"n_passages": n_texts, "shard_size": shard_size}
    record = shard_dir / LAYOUT_FILE
    try:
        found = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        found = None
    if found != layout:
        if found is not None or any(shard_dir.glob("shard-*.npy")):
            log.warning("embedding shards in %s were cut for %s, not %s: encoding again", shard_dir, found, layout)
        shutil.rmtree(shard_dir, ignore_errors=True)
        shard_dir.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(layout), encoding="utf-8")
    for leftover in shard_dir.glob(".shard-*.partial"):  # a shard being written when its process died
        leftover.unlink(missing_ok=True)


def missing_shards(shard_dir: Path, n_texts: int, shard_size: int) -> list[int]:
    """Numbers of the shards of ``n_texts`` that ``shard_dir`` does not hold yet."""
    return [i for i in range(-(-n_texts // shard_size)) if not shard_path(shard_dir, i).exists()]


class ShardEncoder:
    """A Ray Data actor: loads the encoder once, then encodes and writes one shard per batch row. It
    cuts each shard's texts from ``texts`` itself (a passage store pickles as its folder), so the
    driver never holds the corpus's texts, nor does Ray's object store."""

    def __init__(self, config: Any, shard_dir: str, texts: Sequence[str], shard_size: int,
                 threads: int | None = None):
        from slm_ray.retrieval.dense import DenseRetriever

        if threads:  # torch would use Ray's OMP_NUM_THREADS otherwise, not the CPUs the actor holds
            import torch

            torch.set_num_threads(threads)
        self.retriever = DenseRetriever(config, [])  # the in-process encoder: same model, batch size, dtype
        self.shard_dir = Path(shard_dir)
        self.texts, self.shard_size = texts, shard_size

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        for shard in (int(number) for number in batch["shard"]):
            texts = list(self.texts[shard * self.shard_size:(shard + 1) * self.shard_size])
            _save_shard(shard_path(self.shard_dir, shard), self.retriever.encode(texts))
        return {"shard": np.asarray(batch["shard"])}


def encoder_resources() -> dict[str, Any]:
    """The encoder pool for the Ray this process is connected to: one actor per GPU, or one actor
    holding the CPUs of the largest node (this machine's, when Ray Data is to start a local Ray)."""
    import ray

    if not ray.is_initialized():
        return {"concurrency": 1, "num_gpus": 0, "num_cpus": os.cpu_count() or 1}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    gpus = int(sum(n.get("GPU", 0) for n in nodes))
    if gpus:
        return {"concurrency": gpus, "num_gpus": 1, "num_cpus": 1}
    return {"concurrency": 1, "num_gpus": 0, "num_cpus": int(max((n.get("CPU", 1) for n in nodes), default=1)) or 1}


def _inside_ray_worker() -> bool:
    """True in a Ray task or actor (a sweep's prepare task): its encoder actors might never get CPUs."""
    import ray

    return ray.is_initialized() and ray.get_runtime_context().get_task_id() is not None


def encode_with_ray_data(config: Any, texts: Sequence[str], shard_dir: Path, shard_size: int = 10_000,
                         concurrency: int | None = None, num_gpus: float | None = None,
                         num_cpus: float | None = None, runtime_env: dict[str, Any] | None = None,
                         load: bool = True) -> Any:
    """Embeddings of ``texts`` (float32, normalised), computed by a Ray Data actor pool and kept as
    shards of ``shard_size`` under ``shard_dir``; shards already there are not encoded again.
    ``concurrency`` (actors) defaults to the cluster's GPUs, else 1; ``num_gpus`` per actor to 1
    when the cluster has GPUs; ``num_cpus`` per actor (also torch's threads) to Ray's default.
    Ray must be initialised (or is started locally by Ray Data). ``load=False``: only the shards
    (a driver that encodes for a build elsewhere need not hold 21M x 384 floats); returns None."""
    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    _use_layout(shard_dir, len(texts), shard_size)
    missing = missing_shards(shard_dir, len(texts), shard_size)
    total = -(-len(texts) // shard_size)
    if missing:
        log.info("dense index: %d of %d embedding shards to encode with Ray Data", len(missing), total, extra=STEP)
        _run_pool(config, texts, shard_dir, shard_size, missing, concurrency=concurrency, num_gpus=num_gpus,
                  num_cpus=num_cpus, runtime_env=runtime_env)
    return load_shards(shard_dir, total) if load else None


def _run_pool(config: Any, texts: Sequence[str], shard_dir: Path, shard_size: int, missing: list[int], *,
              concurrency: int | None, num_gpus: float | None, num_cpus: float | None,
              runtime_env: dict[str, Any] | None) -> None:
    """Encode the ``missing`` shards with an actor pool: one log line per finished shard, with the ETA."""
    import numpy as np
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
    num_gpus = (1 if gpus else 0) if num_gpus is None else num_gpus
    concurrency = concurrency or max(1, gpus)
    remote_args: dict[str, Any] = {"num_gpus": num_gpus}
    if num_cpus:
        remote_args["num_cpus"] = num_cpus
    if runtime_env:
        remote_args["runtime_env"] = runtime_env
    ray.data.DataContext.get_current().enable_progress_bars = False  # the log lines below say it
    dataset = ray.data.from_items([{"shard": i} for i in missing]).map_batches(
        ShardEncoder, fn_constructor_kwargs={"config": config, "shard_dir": str(shard_dir), "texts": texts,
                                             "shard_size": shard_size, "threads": int(num_cpus) if num_cpus else None},
        batch_size=1, compute=ray.data.ActorPoolStrategy(size=concurrency), **remote_args)
    done: list[int] = []
    started = time.perf_counter()
    for row in dataset.iter_rows():
        done.append(int(np.asarray(row["shard"]).item()))
        log.info("dense index: embedding shard %d encoded: %s", done[-1],
                 shards_done_text(len(done), len(missing), started), extra=STEP)
    if sorted(done) != missing:
        raise RuntimeError(f"Ray Data encoded shards {sorted(done)}, expected {missing}")


def encode_in_process(retriever: Any, texts: Sequence[str], shard_dir: Path, shard_size: int) -> Any:
    """The shards ``encode_with_ray_data`` would write, encoded by ``retriever`` in this process
    (inside a Ray task, where an actor pool could wait forever for the CPUs the task holds)."""
    shard_dir.mkdir(parents=True, exist_ok=True)
    _use_layout(shard_dir, len(texts), shard_size)
    missing = missing_shards(shard_dir, len(texts), shard_size)
    started = time.perf_counter()
    for count, shard in enumerate(missing, start=1):
        rows = texts[shard * shard_size:(shard + 1) * shard_size]
        _save_shard(shard_path(shard_dir, shard), retriever.encode(list(rows)))
        log.info("dense index: embedding shard %d encoded in this process: %s", shard,
                 shards_done_text(count, len(missing), started), extra=STEP)
    return load_shards(shard_dir, -(-len(texts) // shard_size))


def load_shards(shard_dir: Path, total: int) -> Any:
    """The shards ``0 .. total-1``, concatenated in order."""
    import numpy as np

    parts = [np.load(shard_path(shard_dir, i)) for i in range(total)]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)


def encode_shards(retriever: Any, texts: Sequence[str], work: Path) -> Any:
    """The corpus's embeddings through the shards in ``work/embeddings``: by Ray Data with the pool
    ``encoder_resources`` sizes, or in this process when it runs inside a Ray task."""
    config = retriever.config
    shard_dir = work / EMBEDDINGS_FOLDER
    if _inside_ray_worker():
        return encode_in_process(retriever, texts, shard_dir, config.ray_encode_shard_size)
    return encode_with_ray_data(config, texts, shard_dir, config.ray_encode_shard_size, **encoder_resources())


def dense_part(retriever_cfg: Any) -> Any | None:
    """The dense settings of a retriever: its own (dense), its dense part's (hybrid), else None."""
    if retriever_cfg.type == "dense":
        return retriever_cfg
    return getattr(retriever_cfg, "dense", None) if retriever_cfg.type == "hybrid" else None


def wants_ray_data(retriever_cfg: Any, passages: Sequence[Any]) -> bool:
    """Whether the dense index of ``retriever_cfg`` (or its dense part) is encoded by Ray Data."""
    from slm_ray.retrieval.dense import DenseRetriever

    config = dense_part(retriever_cfg)
    return config is not None and DenseRetriever(config, passages).uses_ray_data()


def encode_for_index(retriever_cfg: Any, passages: Sequence[Any], cache_dir: str | Path,
                     runtime_env: dict[str, Any] | None = None, index_store: str | None = None) -> bool:
    """Before a build that runs elsewhere (a sweep's prepare task) or in this process (``slm-ray
    index``): encode the embedding shards of ``retriever_cfg``'s dense index with Ray Data from this
    driver, when the corpus is big enough and the index is neither cached nor complete in
    ``index_store`` (the build downloads it from there). True when it encoded."""
    from slm_ray.retrieval.base import PARTIAL_SUFFIX, index_key, passage_text

    if not wants_ray_data(retriever_cfg, passages):
        return False
    config = dense_part(retriever_cfg)
    folder = Path(cache_dir) / "indexes" / index_key(config, passages)
    if folder.is_dir():
        # Cached. Not verified here (a CRC of GBs): the build checks it, and re-encodes an unsound
        # entry in its own process (``encode_shards``).
        return False
    from slm_ray.retrieval.index_store import holds_complete

    if holds_complete(index_store, folder.name):
        return False  # uploaded by another machine: downloaded by the build, not encoded again
    shard_dir = folder.with_name(folder.name + PARTIAL_SUFFIX) / EMBEDDINGS_FOLDER
    encode_with_ray_data(config, LazyTexts(passages, passage_text), shard_dir, config.ray_encode_shard_size,
                         runtime_env=runtime_env, load=False, **encoder_resources())
    return True


class LazyTexts(Sequence):
    """The indexed text of each passage, made when a shard is cut (a 21M-passage store stays on disk)."""

    def __init__(self, passages: Sequence[Any], text: Any):
        self.passages, self.text = passages, text

    def __len__(self) -> int:
        return len(self.passages)

    def __getitem__(self, item: Any) -> Any:
        if isinstance(item, slice):
            return [self.text(p) for p in self.passages[item]]
        return self.text(self.passages[item])
