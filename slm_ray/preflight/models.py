"""Can each model be loaded here? Checked from files and one short probe, before Ray or torch start.

A hub model that is neither in the local Hugging Face cache nor downloadable would otherwise cost
minutes of retries per trial; a missing package or folder would fail each trial in turn.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

from slm_ray.errors import ConfigError
from slm_ray.netcheck import http_problem

DEFAULT_ENDPOINT = "https://huggingface.co"
TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
OFFLINE_MODEL = "smollm2_135m_gguf"


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache as huggingface_hub finds it (HF_HUB_CACHE, else HF_HOME/hub),
    read now rather than when huggingface_hub was imported."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def hub_offline() -> str | None:
    """``"HF_HUB_OFFLINE=1"`` (or the older TRANSFORMERS_OFFLINE) when it forbids downloads, else None;
    read as huggingface_hub reads it."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        value = os.environ.get(name)
        if value:
            return f"{name}={value}" if value.upper() in TRUE_VALUES else None
    return None


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def in_hub_cache(repo: str, cache: Path) -> bool:
    """The repo's config.json is in the cache at the revision ``main`` points to (what an offline
    ``from_pretrained`` loads)."""
    if not cache.is_dir():
        return False
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo, "config.json", cache_dir=str(cache))
    except ValueError:  # not a valid repo id (e.g. "a/b/c")
        return False
    return isinstance(found, str)


def _label(cfg: Any) -> str:
    return f"model={cfg.name}"


def local_problem(cfg: Any) -> str | None:
    """Why a model that loads from disk (a packaged GGUF or a folder) cannot, or None."""
    if cfg.source == "gguf_package":
        from slm_ray.generation.sources import packaged_gguf_folder

        try:
            packaged_gguf_folder(cfg.path, cfg.gguf_file)
        except ConfigError as exc:
            return f"{_label(cfg)}: {exc}"
    elif cfg.source == "local":
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            return f"{_label(cfg)}: model.path={cfg.path!r}: folder not found"
        if not (folder / "config.json").is_file():
            return (f"{_label(cfg)}: model.path={cfg.path!r} has no config.json (expected a Hugging Face "
                    "model folder, as save_pretrained writes)")
    return None


def _on_disk(cfg: Any) -> bool:
    """A hub model whose path is a model folder: from_pretrained loads it as it is."""
    return (Path(cfg.path).expanduser() / "config.json").is_file()


def hub_problems(models: list[Any]) -> dict[int, str]:
    """``{index in models: line}`` for each hub model that is not cached and cannot be downloaded.
    The hub is probed once, and only when a model is missing from the cache and downloads are allowed."""
    cache = hub_cache_dir()
    missing = {i: cfg for i, cfg in enumerate(models)
               if cfg.source == "hub" and not _on_disk(cfg) and not in_hub_cache(cfg.path, cache)}
    if not missing:
        return {}
    offline = hub_offline()
    if offline:
        why = f"{offline} forbids downloads"
    else:
        endpoint = hub_endpoint()
        problem = http_problem(endpoint)
        if problem is None:
            return {}  # downloads will work
        why = f"the hub at {endpoint} cannot be reached ({problem})"
    return {
        i: f"{_label(cfg)}: {cfg.path} is not in the Hugging Face cache ({cache}) and {why}: download it first "
           f"(`hf download {cfg.path}` on a machine with internet, then copy the cache), or point model.path at "
           f"a local folder with model.source=local, or use the offline model={OFFLINE_MODEL}"
        for i, cfg in missing.items()
    }


def distinct_models(configs: Iterable[Any]) -> list[Any]:
    """The model sections of ``configs``, one per place weights come from (first seen wins)."""
    seen: dict[tuple[str, str, str | None], Any] = {}
    for cfg in configs:
        seen.setdefault((cfg.model.source, cfg.model.path, cfg.model.gguf_file), cfg.model)
    return list(seen.values())


def model_problems(configs: Iterable[Any]) -> list[str]:
    """One line per model of ``configs`` that cannot be loaded here (tiny models always can)."""
    models = distinct_models(configs)
    from_hub = hub_problems(models)
    problems = [from_hub.get(i) or local_problem(cfg) for i, cfg in enumerate(models)]
    return [p for p in problems if p]
