"""A sweep's prepare stage: every missing index and model copy, made once, before the first trial.

Each is a Ray task holding the CPUs of a whole node (and a GPU for a dense encoder where the
cluster has one), so an index is encoded with the machine's cores rather than beside running
trials, and no trial ever waits on a build. A built-in corpus with the default encoder comes with
its embeddings (``slm_ray.retrieval.prebuilt``), so only BM25's quick build is left for it. A corpus
of at least ``retriever.ray_encode_min_passages`` is encoded first, from the driver, by Ray Data's
encoder actors (one per GPU, or one with a node's CPUs), and a BM25 index of several shards gets a
task per shard (``ray_shards``): its index task then only builds FAISS or links the shards.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from slm_ray.errors import describe_error
from slm_ray.sweeps.spec import Trial

#: Retriever types that run an encoder while building (a GPU helps them).
ENCODING_TYPES = ("dense", "hybrid")


def build_index(retriever_cfg: dict[str, Any], corpus_cfg: dict[str, Any], cache_dir: str, driver_cwd: str,
                threads: int, index_store: str | None = None) -> dict[str, Any]:
    """The body of an index task: build the cached index where it is missing (or download it from
    ``index_store``, and upload one built here)."""
    from pydantic import TypeAdapter

    from slm_ray.config import CorpusConfig, RetrieverConfig
    from slm_ray.data.corpus import load_corpus
    from slm_ray.logs import setup_actor_logging
    from slm_ray.retrieval.base import ensure_index_origin, index_key
    from slm_ray.retrieval.service import enter_project_dir

    setup_actor_logging("prepare")
    enter_project_dir(driver_cwd)
    _use_threads(threads)
    started = time.perf_counter()
    config = TypeAdapter(RetrieverConfig).validate_python(retriever_cfg)
    passages = load_corpus(CorpusConfig.model_validate(corpus_cfg), cache_dir)
    origin = ensure_index_origin(config, passages, cache_dir, index_store)
    return {"what": f"index {index_key(config, passages)}", "built_now": origin.built, "how": origin.describe(),
            "seconds": round(time.perf_counter() - started, 3)}


def copy_model(model_cfg: dict[str, Any], cache_dir: str, driver_cwd: str, threads: int) -> dict[str, Any]:
    """The body of a model task: the local copy a load reads (a packaged GGUF, dequantised)."""
    from slm_ray.config import ModelConfig
    from slm_ray.generation.sources import prepare_local_copy
    from slm_ray.logs import setup_actor_logging
    from slm_ray.retrieval.service import enter_project_dir

    setup_actor_logging("prepare")
    enter_project_dir(driver_cwd)
    _use_threads(threads)
    started = time.perf_counter()
    cfg = ModelConfig.model_validate(model_cfg)
    built = prepare_local_copy(cfg, cache_dir)
    return {"what": f"model copy of {cfg.name}", "built_now": built, "seconds": round(time.perf_counter() - started, 3)}


def _use_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def prepare(pending: list[Trial], driver_cwd: str, worker_env: dict[str, str] | None,
            echo: Callable[[str], None]) -> dict[str, Any]:
    """Run the prepare tasks of ``pending``; returns counts and, per retriever key, a build error."""
    import ray

    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = int(max((n.get("CPU", 0) for n in nodes), default=1)) or 1
    has_gpu = any(n.get("GPU", 0) >= 1 for n in nodes)
    runtime = {"runtime_env": {"env_vars": dict(worker_env)}} if worker_env else {}
    jobs: dict[Any, tuple[str, str | None]] = {}
    failed: dict[str, str] = {}
    for trial in _first_per(pending, lambda t: t.retriever_key):
        cfg = trial.config
        what = f"index for {cfg.retriever.name} over corpus {cfg.corpus.name}"
        error = _parts_from_driver(cfg, runtime.get("runtime_env"), echo)
        if error is not None:
            echo(f"  FAILED    {what}: {error}")
            failed[trial.retriever_key] = error
            continue
        gpus = 1 if has_gpu and cfg.retriever.type in ENCODING_TYPES else 0
        ref = ray.remote(build_index).options(num_cpus=cpus, num_gpus=gpus, max_retries=1, **runtime).remote(
            cfg.retriever.model_dump(by_alias=True), cfg.corpus.model_dump(), cfg.experiment.cache_dir, driver_cwd, cpus,
            cfg.experiment.index_store)
        jobs[ref] = (what, trial.retriever_key)
    for trial in _first_per(pending, _model_copy_key):
        cfg = trial.config
        # on a GPU node where the trial will be one: the dtype of the copy is the one the hardware decides
        gpus = 1 if has_gpu and cfg.model.num_gpus > 0 else 0
        ref = ray.remote(copy_model).options(num_cpus=cpus, num_gpus=gpus, max_retries=1, **runtime).remote(
            cfg.model.model_dump(by_alias=True), cfg.experiment.cache_dir, driver_cwd, cpus)
        jobs[ref] = (f"model copy of {cfg.model.name}", None)
    if not jobs:
        return {"indexes_built": 0, "indexes_cached": 0, "failed": failed}
    echo(f"preparing {len(jobs)} index(es) and model copies, each with {cpus} CPU(s)")
    counts = {"indexes_built": 0, "indexes_cached": 0}
    waiting = list(jobs)
    while waiting:
        done, waiting = ray.wait(waiting, num_returns=1)
        what, key = jobs[done[0]]
        try:
            out = ray.get(done[0])
        except ray.exceptions.RayTaskError as exc:
            error = describe_error(exc)
            echo(f"  FAILED    {what}: {error}")
            if key is not None:
                failed[key] = error
            continue
        if out["what"].startswith("index"):
            counts["indexes_built" if out["built_now"] else "indexes_cached"] += 1
        how = out.get("how") or ("built" if out["built_now"] else "cached")
        echo(f"  prepared  {what}: {how} ({out['seconds']:.1f}s)")
    return {**counts, "failed": failed}


def _parts_from_driver(cfg: Any, runtime_env: dict[str, Any] | None, echo: Callable[[str], None]) -> str | None:
    """The parts of a big index that Ray spreads, started from the driver before the index task: a
    dense corpus's embeddings (Ray Data's encoder actors) and a sharded BM25's shards (a task each).
    Started inside that task, which holds all CPUs of a node, they would wait for CPUs forever on
    a one-node cluster; the task then finds them all and only builds FAISS or links the shards.
    Returns the error, if any, in one line."""
    from slm_ray.data.corpus import load_corpus
    from slm_ray.retrieval.ray_encode import encode_for_index
    from slm_ray.retrieval.ray_shards import build_shards_with_ray

    started = time.perf_counter()
    try:
        passages = load_corpus(cfg.corpus, cfg.experiment.cache_dir)
        built = build_shards_with_ray(cfg.retriever, passages, cfg.experiment.cache_dir, runtime_env,
                                      cfg.experiment.index_store, echo=lambda text: echo(f"  {text}"))
        encoded = cfg.retriever.type in ENCODING_TYPES and encode_for_index(
            cfg.retriever, passages, cfg.experiment.cache_dir, runtime_env, cfg.experiment.index_store)
    except Exception as exc:  # one index failing leaves the other trials to run
        return describe_error(exc)
    if encoded:
        echo(f"  encoded   {cfg.corpus.name} for {cfg.retriever.name} with Ray Data "
             f"({len(passages):,} passages, {time.perf_counter() - started:.1f}s)")
    if built:
        echo(f"  built     {built} bm25 shard(s) of {cfg.corpus.name} as Ray tasks")
    return None


def _model_copy_key(trial: Trial) -> tuple[str, ...] | None:
    """Trials whose models load from the same local copy (backends and decoding aside)."""
    model = trial.config.model
    return (model.path, str(model.gguf_file), model.dtype, model.device) if model.source == "gguf_package" else None


def _first_per(trials: list[Trial], key: Callable[[Trial], Any]) -> list[Trial]:
    """The first trial of each distinct non-None ``key``."""
    seen: dict[Any, Trial] = {}
    for trial in trials:
        k = key(trial)
        if k is not None and k not in seen:
            seen[k] = trial
    return list(seen.values())

