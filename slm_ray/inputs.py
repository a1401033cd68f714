"""What a run's answers depend on, computed from its config: the ``Inputs`` its run folder records.

Above the storage layer (``slm_ray.store.run_folder`` keeps and compares an ``Inputs``; this module
makes one): it reads the examples' digest, the corpus files and what ``dtype: auto`` becomes on this
machine, which needs the data, generation and retrieval packages that storage must not import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from slm_ray.store.run_folder import Inputs


def run_inputs(cfg: Any, examples: list[Any], decide_dtypes: bool = False) -> Inputs:
    """The inputs of a run of ``cfg`` over ``examples`` (the corpus is hashed for retrieval only).

    ``decide_dtypes``: record what ``dtype: auto`` becomes on this machine (the run that answers);
    left open otherwise (a sweep's driver, ``report --verify``), which matches any decided dtype.
    """
    from slm_ray.store.fingerprints import AGGREGATION_KEYS, answer_settings, examples_digest

    digest = examples_digest((e.id, e.question, e.answers, tuple((p.id, p.title, p.text) for p in e.gold_passages))
                             for e in examples)
    corpus = None
    if cfg.experiment_mode == "retriever_context":
        corpus = corpus_source_digest(cfg.corpus, cfg.experiment.cache_dir)
    aggregation = {k: getattr(cfg.experiment, k) for k in AGGREGATION_KEYS}
    resolved = resolved_dtypes(cfg) if decide_dtypes else None
    return Inputs(answer_settings(cfg.model_dump(by_alias=True), resolved), len(examples), digest, corpus, aggregation)


def resolved_dtypes(cfg: Any) -> dict[str, str]:
    """What each ``dtype: auto`` (model; dense encoder in retriever_context) becomes on this machine."""
    found: dict[str, str] = {}
    if cfg.model.dtype == "auto":
        from slm_ray.generation.sources import planned_model_dtype

        found["model"] = planned_model_dtype(cfg.model)[0]
    if cfg.experiment_mode == "retriever_context" and getattr(cfg.retriever, "dtype", None) == "auto":
        from slm_ray.retrieval.dense import encoder_dtype

        found["retriever"] = encoder_dtype(cfg.retriever)[0]
    return found


def corpus_source_digest(corpus_cfg: Any, cache_dir: str) -> str:
    """A digest of the corpus file(s) as they are now (an s3:// object: its cached version)."""
    from slm_ray.store.fingerprints import file_digest, stable_hash

    if corpus_cfg.path == "builtin":
        from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS

        files = [NQ_OPEN_ORACLE, WIKI_DISTRACTORS]
    else:
        from slm_ray.data.corpus import corpus_file

        files = [corpus_file(corpus_cfg, cache_dir)]  # a BEIR folder: its corpus.jsonl
    return stable_hash([file_digest(f) for f in files], 16)


def folder_state(cfg: Any, path: Path, datasets: dict[str, Any] | None = None
                 ) -> tuple[str, dict[str, Any] | None, str | None]:
    """(state, the inputs checked, why they could not be) of the run folder at ``path`` for ``cfg``:
    ``complete`` (results for these very inputs), ``partial`` (answers to resume) or ``new``; raises
    ``InputsChanged`` when it holds answers for other inputs (and ``experiment.replace`` is off).

    ``datasets`` memoises loaded examples by dataset config across calls (a sweep's trials). A dataset
    that cannot be read here leaves the decision to the run (it fails alone, with that error).
    """
    from slm_ray.errors import SlmRayError
    from slm_ray.experiment import build_dataset
    from slm_ray.store.fingerprints import stable_hash
    from slm_ray.store.run_folder import RunFolder

    folder = RunFolder(path)
    datasets = {} if datasets is None else datasets
    key = stable_hash([cfg.dataset.model_dump(by_alias=True), cfg.experiment.cache_dir])
    try:
        if key not in datasets:
            datasets[key] = build_dataset(cfg)
        inputs = run_inputs(cfg, datasets[key])
    except SlmRayError as exc:
        return ("partial" if folder.has_answers() else "new"), None, str(exc)
    return folder.state(inputs, replace=cfg.experiment.replace), inputs.to_json(), None
