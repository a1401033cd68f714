"""Compose ``conf/`` with Hydra overrides and turn Hydra's errors into one line each.

We use Hydra's compose API rather than ``@hydra.main`` so that an entry point controls what is
printed and written: a bad override must exit 2 with one line and leave ``outputs/`` untouched.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

from slm_ray.config import ExperimentConfig, validate_config
from slm_ray.errors import ConfigError

CONFIG_DIR = Path(os.environ.get("SLM_RAY_CONFIG_DIR", Path(__file__).resolve().parents[1] / "conf"))
GROUPS: tuple[str, ...] = ("model", "dataset", "corpus", "retriever", "prompt", "tracker")


def group_options(group: str) -> list[str]:
    """The choices of a config group: the YAML files in ``conf/<group>/``."""
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if not p.stem.startswith("_"))


def _explain(exc: Exception, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error, naming the bad value and the valid ones."""
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing and missing.group(1) in GROUPS:
        group, option = missing.groups()
        return f"unknown {group} option {option!r} (valid: {', '.join(group_options(group))})"
    no_match = re.search(r"Could not override '([^']+)'", text) or re.search(r"Key '([^']+)' is not in struct", text)
    if no_match:
        key = no_match.group(1)
        head = key.split(".")[0]
        if head in GROUPS or head in ("experiment", "experiment_mode"):
            return f"unknown config key {key!r}"
        return (
            f"unknown config key {key!r} (valid top-level keys: experiment_mode, experiment, "
            + ", ".join(GROUPS) + ")"
        )
    parse = re.search(r"Error parsing override '([^']+)'", text)
    if parse:
        return f"cannot parse override {parse.group(1)!r} (expected key=value, e.g. model.batch_size=16)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"bad override in {' '.join(overrides) or '(none)'}: {first}"


def compose_raw(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed config as a plain, resolved dict (interpolations applied)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=list(overrides))
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "a key"
        raise ConfigError(f"missing value for {key} (set it on the command line: {key}=...)") from None
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    assert isinstance(raw, dict)
    return raw


def expand_overrides(overrides: Sequence[str]) -> list[list[str]]:
    """Hydra's sweep syntax (``key=a,b,c``) expanded into one override list per combination."""
    import itertools

    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    choices = [
        [f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override() else [o.input_line]
        for o in parsed
    ]
    return [list(combo) for combo in itertools.product(*choices)]


def compose_config(overrides: Sequence[str] = ()) -> ExperimentConfig:
    """Compose and validate: the one way entry points and tests get an ``ExperimentConfig``."""
    return validate_config(compose_raw(overrides))
