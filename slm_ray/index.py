"""Build the retrieval indexes runs and sweeps will load, before any of them starts.

    slm-ray index corpus=file corpus.path=psgs_w100.tsv                  # BM25 (the default retriever)
    slm-ray index -m retriever=bm25,dense corpus=file corpus.path=s3://my-bucket/psgs_w100.tsv
    slm-ray index retriever=dense_ivfpq corpus=file corpus.path=my.parquet experiment.cache_dir=/shared/cache

Arguments are the Hydra overrides a run or sweep would get (``key=a,b`` builds each); the index
lands in ``<experiment.cache_dir>/indexes/`` under the key those runs look for, so they only load
it. A corpus file is streamed into its passage store first; a killed build resumes from its
finished shards. A dense index over at least ``retriever.ray_encode_min_passages`` passages is
encoded by Ray Data, and the shards of a BM25 index that has several are built as parallel Ray
tasks (on the Ray of ``RAY_ADDRESS``, else a Ray of this machine), kept across a kill. An index that is already there and sound is left as it is ("cached").
With ``experiment.index_store=s3://bucket/prefix`` a missing index is downloaded from there when an
upload of it is complete ("downloaded from s3://..."), and one built (or cached but not yet there)
is uploaded, so the other machines of a cluster download it instead of building it.
Options: --config-dir DIR, --debug, --help. (``python -m slm_ray.index`` is the same.)
"""

from __future__ import annotations

import sys
import time
from typing import Any, Sequence

from slm_ray.cli import run_cli


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_index, __doc__ or "", argv, hydra_flags=True)


def _index(overrides: list[str], print_config: str | None) -> int:
    from slm_ray.composition import compose_jobs
    from slm_ray.data.storage import load_env_file

    load_env_file()
    configs = compose_jobs(overrides, print_config)  # all checked before any build
    for cfg in _distinct_indexes(configs or []):
        build_index_of(cfg)
    return 0


def _distinct_indexes(configs: list[Any]) -> list[Any]:
    """One config per (retriever settings, corpus, cache folder): ``k`` and names do not change an index."""
    from slm_ray.retrieval.base import QUERY_TIME_KEYS

    seen: dict[str, Any] = {}
    for cfg in configs:
        settings = {k: v for k, v in cfg.retriever.model_dump().items() if k not in QUERY_TIME_KEYS}
        key = repr((sorted(settings.items()), cfg.corpus.model_dump(), cfg.experiment.cache_dir))
        seen.setdefault(key, cfg)
    return list(seen.values())


def build_index_of(cfg: Any) -> bool:
    """Build (or find) the index of ``cfg``'s retriever over its corpus; one line saying which."""
    from slm_ray.data.corpus import load_corpus
    from slm_ray.retrieval.base import ensure_index_origin, index_key

    started = time.perf_counter()
    passages = load_corpus(cfg.corpus, cfg.experiment.cache_dir)
    _spread_with_ray(cfg, passages)
    origin = ensure_index_origin(cfg.retriever, passages, cfg.experiment.cache_dir, cfg.experiment.index_store)
    where = (f"{cfg.experiment.cache_dir}/indexes/{index_key(cfg.retriever, passages)}" if cfg.retriever.type != "hybrid"
             else "the bm25 and dense indexes it fuses")
    uploaded = f" (uploaded to {origin.uploaded_to})" if origin.uploaded_to else ""
    print(f"{cfg.retriever.name} over corpus {cfg.corpus.name} ({len(passages):,} passages): "
          f"{origin.found} in {time.perf_counter() - started:.1f}s -> {where}{uploaded}")
    return origin.built


def _spread_with_ray(cfg: Any, passages: Any) -> None:
    """A big index's parts that Ray spreads over the cluster (or this machine's CPUs): a dense
    corpus's embeddings (``retriever.ray_encode_min_passages``, Ray Data) and a sharded BM25's
    shards (a task each), on the Ray of ``RAY_ADDRESS``, or a Ray of this machine started here and
    stopped after. The build then finds them and only builds FAISS or links the shards."""
    from slm_ray.retrieval.ray_encode import encode_for_index, wants_ray_data
    from slm_ray.retrieval.ray_shards import build_shards_with_ray, wants_ray_shards

    cache_dir = cfg.experiment.cache_dir
    if not (wants_ray_data(cfg.retriever, passages) or wants_ray_shards(cfg.retriever, passages, cache_dir)):
        return
    import os

    import ray

    from slm_ray.sweeps.engine import QUIET_WORKERS, connect_ray
    from slm_ray.sweeps.reaper import Reaper

    started_here = connect_ray(None, dashboard=False)[0]
    # a Ray of this machine's own goes with this process, even after kill -9 (as a sweep's does)
    reaper = Reaper.start() if started_here and not os.environ.get("RAY_ADDRESS") else None
    runtime_env = {"env_vars": dict(QUIET_WORKERS)}
    try:
        build_shards_with_ray(cfg.retriever, passages, cache_dir, runtime_env, cfg.experiment.index_store)
        encode_for_index(cfg.retriever, passages, cache_dir, runtime_env, cfg.experiment.index_store)
    finally:
        if started_here:
            ray.shutdown()
        if reaper is not None:
            reaper.done()


if __name__ == "__main__":
    sys.exit(main())
