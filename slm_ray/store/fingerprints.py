"""Hashes that decide what may be reused: run folders, sweep trials, retriever actors and caches.

One neutral module, so that the run folder, the sweep planner, the retriever service and the index
cache agree on how a config or a file is hashed without importing one another.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Mapping

#: Model keys that change neither the answers nor how they are decoded (resources and batching;
#: batch composition does not change greedy answers, and sampling is seeded per example order).
MODEL_BOOKKEEPING_KEYS = frozenset({"batch_size", "cleanup_every", "device", "gpu_memory_utilization", "num_gpus"})
#: Experiment keys that shape results.json from the answers (a change recomputes it, answers are kept).
AGGREGATION_KEYS = ("seed", "bootstrap_resamples")
#: Sections whose ``dtype: auto`` is decided by the hardware that runs them (model, dense encoder).
DTYPE_SECTIONS = ("model", "retriever")
#: ``resolved_dtype`` where the dtype is decided elsewhere: a sweep's driver may lack its workers'
#: GPUs, so its key leaves the choice open and matches whatever the worker decides.
UNRESOLVED = "auto"


def stable_hash(data: Any, length: int = 12) -> str:
    """A short hex digest of JSON-able data, independent of dict order."""
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:length]


def file_digest(path: str | Path, length: int = 16) -> str:
    """sha256 of a file's bytes (streamed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:length]


def answer_settings(config: dict[str, Any], resolved_dtypes: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The parts of a dumped ExperimentConfig that the answers depend on (bookkeeping removed).

    The tracker and where files go do not change an answer; the model, its decoding, the prompt,
    the mode, the dataset selection and (for retrieval) the retriever and corpus settings do. So
    does the dtype that ``dtype: auto`` became on the machine that answers: each such section gets
    ``resolved_dtype`` from ``resolved_dtypes`` (``UNRESOLVED`` where not given), so that a bf16 run
    never resumes a float32 folder. An explicit dtype is its own record (no key added). Secrets are
    masked (inputs.json records these settings; a new token changes no answer).
    """
    from slm_ray.redaction import mask_secrets

    data = mask_secrets(json.loads(json.dumps(config, default=str)), in_text=False)
    for section in DTYPE_SECTIONS:
        part = data.get(section)
        if isinstance(part, dict) and part.get("dtype") == "auto":
            part["resolved_dtype"] = (resolved_dtypes or {}).get(section, UNRESOLVED)
    data["model"] = {k: v for k, v in data["model"].items() if k not in MODEL_BOOKKEEPING_KEYS}
    data.pop("tracker", None)
    data.pop("experiment", None)  # seed and bootstrap_resamples shape results.json, not the answers
    if data.get("experiment_mode") != "retriever_context":
        data.pop("retriever", None)
        data.pop("corpus", None)
    return data


def without_resolved(settings: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with every ``resolved_dtype`` dropped: what a sweep plans, before any hardware decides."""
    data = json.loads(json.dumps(settings))
    for section in DTYPE_SECTIONS:
        if isinstance(data.get(section), dict):
            data[section].pop("resolved_dtype", None)
    return data


def reconcile_resolved(new: dict[str, Any], old: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(new, old) where a ``resolved_dtype`` left open (``UNRESOLVED``) on one side takes the other's
    value: the two agree unless both decided, differently (or one side predates the key)."""
    new, old = json.loads(json.dumps(new)), json.loads(json.dumps(old))
    for section in DTYPE_SECTIONS:
        a, b = new.get(section), old.get(section)
        if not (isinstance(a, dict) and isinstance(b, dict)):
            continue
        if a.get("resolved_dtype") == UNRESOLVED and "resolved_dtype" in b:
            a["resolved_dtype"] = b["resolved_dtype"]
        elif b.get("resolved_dtype") == UNRESOLVED and "resolved_dtype" in a:
            b["resolved_dtype"] = a["resolved_dtype"]
    return new, old


def examples_digest(rows: Iterable[tuple[str, str, tuple[str, ...], tuple[Any, ...]]]) -> str:
    """Hash of (id, question, answers, gold passages) of the examples a run answers, in order."""
    digest = hashlib.sha256()
    for example_id, question, answers, gold in rows:
        digest.update(json.dumps([example_id, question, list(answers), [list(g) for g in gold]],
                                 ensure_ascii=False).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()[:16]
