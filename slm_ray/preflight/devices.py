"""Does this machine have what each model's backend and device need (a CUDA GPU, vllm)?

Checked only where the models will run on this machine: a run, or a sweep on a local Ray. A sweep
on an existing cluster loads its models on the cluster's nodes, whose GPUs the driver cannot see.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

from slm_ray.errors import ConfigError


def _cuda_visible() -> bool:
    import torch  # only when some model asks for CUDA: importing torch takes seconds

    return bool(torch.cuda.is_available())


def model_device_problem(cfg: Any, cuda_visible: Callable[[], bool]) -> str | None:
    """Why the ``model`` section ``cfg`` cannot run on this machine, or None."""
    if cfg.backend == "vllm":
        from slm_ray.generation import vllm as vllm_backend

        if not vllm_backend.vllm_installed():
            return vllm_backend.NOT_INSTALLED
        try:
            vllm_backend.check_config(cfg)
            vllm_backend.check_visible_gpus(cfg)
        except ConfigError as exc:
            return str(exc)
        return None
    if cfg.device == "cuda" and not cuda_visible():
        return "model.device='cuda' but no CUDA GPU is visible (valid here: cpu, auto)"
    return None


def device_problems(configs: Iterable[Any]) -> list[str]:
    """One line per model whose backend or device is not available here (each distinct line once)."""
    cuda_visible = functools.cache(_cuda_visible)  # torch is asked at most once
    lines: dict[str, None] = {}
    for cfg in configs:
        problem = model_device_problem(cfg.model, cuda_visible)
        if problem:
            lines.setdefault(f"model={cfg.model.name}: {problem}")
    return list(lines)
