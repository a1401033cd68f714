"""Fail fast: refuse, before Ray, torch or any file, what cannot run here.

Entry points call :func:`check_run` or :func:`check_sweep` once the configs are composed. Every
problem found becomes one line of a single :class:`PreflightError` (exit code 2): a model that is
neither installed, on disk, cached nor downloadable; a CUDA GPU or vllm that is not there; a Ray
cluster that does not answer. Each network check is one probe of a few seconds, so a refusal comes
within seconds instead of after minutes of a client's retries.
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

from slm_ray.errors import PreflightError, unwritable


def check_run(configs: Sequence[Any]) -> None:
    """Refuse the configs of ``slm_ray.run`` (models load in this process) if any cannot run here."""
    _raise_if(folder_problems(configs) + _model_problems(configs, on_this_machine=True))


def folder_problems(configs: Iterable[Any]) -> list[str]:
    """``experiment.output_dir`` / ``cache_dir`` (or a folder above them) that is a file, or that
    cannot be written (a read-only file system, no permission): the run would fail at its first
    write, after the model load, or a sweep's trials one by one on Ray."""
    from pathlib import Path

    problems = []
    for key in ("output_dir", "cache_dir"):
        for value in dict.fromkeys(getattr(c.experiment, key) for c in configs):
            for folder in (Path(value), *Path(value).parents):
                if folder.exists():
                    if not folder.is_dir():
                        problems.append(f"experiment.{key}={value!r}: {folder} is a file, not a folder")
                    elif (fault := _write_fault(folder)) is not None:
                        problems.append(f"experiment.{key}={value!r}: {unwritable(folder, fault, f'experiment.{key}')}")
                    break
    return problems


def _write_fault(folder: Any) -> OSError | None:
    """Why nothing can be written in ``folder`` (read-only file system, no permission), without
    writing anything; None when it can be written."""
    import errno

    if os.statvfs(folder).f_flag & os.ST_RDONLY:
        return OSError(errno.EROFS, os.strerror(errno.EROFS), str(folder))
    if not os.access(folder, os.W_OK | os.X_OK):
        return OSError(errno.EACCES, os.strerror(errno.EACCES), str(folder))
    return None


def check_sweep(plan: Any, address: str | None) -> None:
    """Refuse a sweep plan whose models, devices or Ray cluster are not available. On an existing
    cluster the models load on its nodes: this machine's GPUs and vllm are not checked there."""
    from slm_ray.preflight.ray_address import ray_address_problem

    configs = [trial.config for trial in plan.trials]
    target = address or os.environ.get("RAY_ADDRESS")
    on_cluster = bool(target) and target != "local"
    problems = folder_problems(configs) + _model_problems(configs, on_this_machine=not on_cluster)
    address_problem = ray_address_problem(address)
    _raise_if(problems + ([address_problem] if address_problem else []))


def _model_problems(configs: Iterable[Any], on_this_machine: bool) -> list[str]:
    from slm_ray.preflight.devices import device_problems
    from slm_ray.preflight.models import model_problems

    configs = list(configs)
    problems = model_problems(configs)
    if on_this_machine:  # one line per model: its first problem (every line starts "model=NAME: ")
        named = {p.partition(": ")[0] for p in problems}
        problems += [p for p in device_problems(configs) if p.partition(": ")[0] not in named]
    return problems


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise PreflightError(problems)
