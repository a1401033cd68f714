"""Does this machine have what each model's backend and device need (a CUDA GPU, vllm and its build)?

Checked only where the models will run on this machine: a run, or a sweep on a local Ray. A sweep
on an existing cluster loads its models on the cluster's nodes, whose GPUs the driver cannot see.
"""

from __future__ import annotations

from typing import Any, Iterable

from slm_ray.errors import ConfigError


def model_device_problem(cfg: Any) -> str | None:
    """Why the ``model`` section ``cfg`` cannot run on this machine, or None. Asks torch (seconds to
    import) only for a model that needs CUDA."""
    from slm_ray.generation import vllm as vllm_backend
    from slm_ray.generation.sources import resolve_device

    if cfg.backend == "vllm" and not vllm_backend.vllm_installed():
        return vllm_backend.NOT_INSTALLED
    try:
        if cfg.backend == "vllm":
            vllm_backend.check_config(cfg)
            vllm_backend.check_device(cfg)
        elif cfg.device == "cuda":
            resolve_device("cuda")
    except ConfigError as exc:
        return str(exc)
    return None


def device_problems(configs: Iterable[Any]) -> list[str]:
    """One line per model whose backend or device is not available here (each distinct line once)."""
    lines: dict[str, None] = {}
    for cfg in configs:
        problem = model_device_problem(cfg.model)
        if problem:
            lines.setdefault(f"model={cfg.model.name}: {problem}")
    return list(lines)
