"""Encoding a big corpus with Ray Data: an actor pool of encoders writes embedding shards.

Wikipedia's 21M passages take hours to embed; spread over a cluster's GPUs (or CPUs) with
``map_batches`` over a pool of actors, each of which loads the encoder once. Every shard is a
``.npy`` file written under a temporary name and renamed, so a rerun after a crash encodes only the
shards that are missing. ``shard_dir`` must be visible to every node that runs an encoder (a
shared filesystem on a multi-node cluster). ray is imported inside functions.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("slm_ray.retrieval")


def shard_path(shard_dir: Path, shard: int) -> Path:
    return shard_dir / f"shard-{shard:06d}.npy"


def _save_shard(path: Path, embeddings: Any) -> None:
    """Write one shard through a temporary name: a shard that exists is complete."""
    import numpy as np

    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    with open(partial, "wb") as handle:
        np.save(handle, embeddings)
    partial.replace(path)


class ShardEncoder:
    """A Ray Data actor: loads the encoder once, then encodes and writes one shard per batch row."""

    def __init__(self, config: Any, shard_dir: str):
        from slm_ray.retrieval.dense import DenseRetriever

        self.retriever = DenseRetriever(config, [])  # the in-process encoder: same model, batch size, dtype
        self.shard_dir = Path(shard_dir)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        for shard, texts in zip(batch["shard"], batch["texts"]):
            _save_shard(shard_path(self.shard_dir, int(shard)), self.retriever.encode(list(texts)))
        return {"shard": np.asarray(batch["shard"])}


def encode_with_ray_data(config: Any, texts: list[str], shard_dir: Path, shard_size: int = 10_000,
                         concurrency: int | None = None, num_gpus: float | None = None) -> Any:
    """Embeddings of ``texts`` (float32, normalised), computed by a Ray Data actor pool and kept as
    shards of ``shard_size`` under ``shard_dir``; shards already there are not encoded again.
    ``concurrency`` (actors) defaults to the cluster's GPUs, else 1; ``num_gpus`` per actor to 1
    when the cluster has GPUs. Ray must be initialised (or is started locally by Ray Data)."""
    import numpy as np
    import ray

    shard_dir = Path(shard_dir)
    shard_dir.mkdir(parents=True, exist_ok=True)
    starts = range(0, len(texts), shard_size)
    missing = [i for i, _ in enumerate(starts) if not shard_path(shard_dir, i).exists()]
    log.info("dense index: %d of %d embedding shards to encode with Ray Data", len(missing), len(starts))
    if missing:
        gpus = int(ray.cluster_resources().get("GPU", 0)) if ray.is_initialized() else 0
        num_gpus = (1 if gpus else 0) if num_gpus is None else num_gpus
        concurrency = concurrency or max(1, gpus)
        rows = [{"shard": i, "texts": texts[i * shard_size:(i + 1) * shard_size]} for i in missing]
        done = ray.data.from_items(rows).map_batches(
            ShardEncoder, fn_constructor_kwargs={"config": config, "shard_dir": str(shard_dir)},
            batch_size=1, concurrency=concurrency, num_gpus=num_gpus).take_all()
        if sorted(int(row["shard"]) for row in done) != missing:
            raise RuntimeError(f"Ray Data encoded shards {sorted(r['shard'] for r in done)}, expected {missing}")
    parts = [np.load(shard_path(shard_dir, i)) for i in range(len(starts))]
    return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)
