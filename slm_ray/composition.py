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

#: The built-in config tree, shipped inside the package so that an installed wheel composes from any
#: folder (the repository's top-level ``conf`` is a link to it).
CONFIG_DIR = Path(__file__).resolve().parent / "conf"
GROUPS: tuple[str, ...] = ("model", "dataset", "corpus", "retriever", "prompt", "tracker")
#: Folders of the user's own options, added to (never replacing) ``conf/``: ``--config-dir DIR`` on
#: the command line, or ``SLM_RAY_CONFIG_DIR`` (several joined with ``os.pathsep``).
ENV_CONFIG_DIRS = "SLM_RAY_CONFIG_DIR"
_added_dirs: list[Path] = []


def use_config_dirs(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """The user config folders of this command (``--config-dir``), replacing any earlier command's."""
    folders = [_checked_dir(Path(p), "--config-dir") for p in paths]
    _added_dirs[:] = list(dict.fromkeys(folders))
    return folders


def _checked_dir(path: Path, origin: str) -> Path:
    folder = path.expanduser().resolve()
    if not folder.is_dir():
        raise ConfigError(f"{origin}: config folder {str(path)!r} does not exist (give a folder holding e.g. "
                          "model/my_model.yaml)")
    if "'" in str(folder):
        raise ConfigError(f"{origin}: config folder {str(folder)!r} has a quote in its path, which Hydra cannot take")
    return folder


def user_config_dirs() -> list[Path]:
    """The user's config folders, in the order given: ``SLM_RAY_CONFIG_DIR`` first, then ``--config-dir``."""
    from_env = [_checked_dir(Path(p), ENV_CONFIG_DIRS) for p in os.environ.get(ENV_CONFIG_DIRS, "").split(os.pathsep) if p]
    return list(dict.fromkeys(from_env + _added_dirs))


def config_dirs() -> list[Path]:
    """Every folder options are taken from: the built-in ``conf/``, then the user's."""
    return [CONFIG_DIR, *user_config_dirs()]


def group_options(group: str) -> list[str]:
    """The choices of a config group: the YAML files in ``<folder>/<group>/`` of every config folder."""
    return sorted({p.stem for folder in config_dirs() for p in (folder / group).glob("*.yaml")
                   if not p.stem.startswith("_")})


def _check_no_shadowing() -> None:
    """A user option named like a built-in one would be silently ignored (the built-in comes first
    on Hydra's search path): refuse it instead."""
    for folder in user_config_dirs():
        for group in GROUPS:
            for path in sorted((folder / group).glob("*.yaml")):
                if (CONFIG_DIR / group / path.name).exists():
                    raise ConfigError(f"{path} has the name of the built-in {group} option {path.stem!r}: rename "
                                      f"it (e.g. {group}=my_{path.stem}); built-in options cannot be replaced")


def search_path_override() -> list[str]:
    """The Hydra override that puts the user's config folders on the search path (none without)."""
    folders = user_config_dirs()
    if not folders:
        return []
    _check_no_shadowing()
    return ["hydra.searchpath=[" + ",".join(f"'file://{folder}'" for folder in folders) + "]"]


def _explain(exc: Exception, overrides: Sequence[str]) -> str:
    """One line for a Hydra composition error, naming the bad value and the valid ones."""
    text = str(exc)
    missing = re.search(r"Could not find '([^/']+)/([^']+)'", text)
    if missing and missing.group(1) in GROUPS:
        group, option = missing.groups()
        return f"unknown {group} option {option!r} (valid: {', '.join(group_options(group))})"
    in_file = re.search(r"In '([^']+)': ConfigKeyError.*?full_key: (\S+)", text, re.DOTALL)
    if in_file:  # an option file sets a key its section does not have
        option, key = in_file.groups()
        return f"unknown config key {key!r} (set in {option}.yaml)"
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
        from slm_ray.redaction import mask_override

        return f"cannot parse override {mask_override(parse.group(1))!r} (expected key=value, e.g. model.batch_size=16)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    from slm_ray.redaction import mask_override, override_secrets, redact

    known = override_secrets(overrides)
    shown = " ".join(mask_override(o, known) for o in overrides) or "(none)"
    return f"bad override in {shown}: {redact(first, known)}"


def compose_raw(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """The composed config as a plain, resolved dict (interpolations applied)."""
    return _compose(overrides, with_hydra=False)


def compose_hydra(overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Hydra's own config for these overrides (``--cfg hydra``): its search path, choices, overrides;
    only ever printed, so with every secret masked."""
    from slm_ray.redaction import mask_secrets, override_secrets

    return mask_secrets(_compose(overrides, with_hydra=True), override_secrets(overrides))


def compose_many(shared: Sequence[str], choices: Sequence[Sequence[str]],
                 values: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Many configs at once, as ``compose_raw([*choices[i], *shared])`` with ``values[i]`` set on top,
    composing with Hydra once per distinct list of choices (about 0.1 s each) rather than once per
    config: a 1,000-trial grid that differs in plain values is composed once. ``values`` map dotted
    keys to values that no override of ``shared`` sets."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    composed: dict[tuple[str, ...], Any] = {}
    configs = []
    for chosen, extra in zip(choices, values):
        key = tuple(chosen)
        if key not in composed:
            composed[key] = _compose_unresolved([*chosen, *shared])
        cfg = composed[key].copy()
        for path, value in extra.items():
            try:
                OmegaConf.update(cfg, path, value, merge=False)
            except OmegaConfBaseException:
                raise ConfigError(f"unknown config key {path!r}") from None
        configs.append(_resolved(cfg, [*chosen, *shared]))
    return configs


def _compose_unresolved(overrides: Sequence[str]) -> Any:
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from slm_ray.config_defaults import register_defaults

    register_defaults()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=[*overrides, *search_path_override()])
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from None


def _resolved(cfg: Any, overrides: Sequence[str]) -> dict[str, Any]:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

    try:
        raw = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        key = getattr(exc, "full_key", "") or "a key"
        raise ConfigError(f"missing value for {key} (set it on the command line: {key}=...)") from None
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    assert isinstance(raw, dict)
    return raw


def _compose(overrides: Sequence[str], with_hydra: bool) -> dict[str, Any]:
    if not with_hydra:
        return _resolved(_compose_unresolved(overrides), overrides)
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from slm_ray.config_defaults import register_defaults

    register_defaults()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            cfg = compose(config_name="config", overrides=[*overrides, *search_path_override()],
                          return_hydra_config=True)
        raw = OmegaConf.to_container(cfg.hydra, resolve=False)  # only what Hydra resolves without a running app
    except (HydraException, OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(_explain(exc, overrides)) from None
    assert isinstance(raw, dict)
    return {key: raw[key] for key in ("searchpath", "overrides", "runtime", "job") if key in raw}


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


def compose_jobs(overrides: Sequence[str], print_config: str | None) -> list[ExperimentConfig] | None:
    """Every combination of ``key=a,b`` composed and checked before any work starts; with ``--cfg``
    they are printed instead and None is returned (the command is done)."""
    configs = [compose_config(combo) for combo in expand_overrides(overrides)]
    if not print_config:
        return configs
    print_configs(print_config, [c.model_dump(by_alias=True) for c in configs], overrides)
    return None


def print_configs(which: str, jobs: list[dict[str, Any]], overrides: Sequence[str]) -> None:
    """``--cfg job|hydra|all`` as Hydra prints it: YAML, one document per job of a multirun; every
    secret masked (``slm_ray.redaction``)."""
    from omegaconf import OmegaConf

    from slm_ray.redaction import mask_secrets

    if which in ("hydra", "all"):
        print("# hydra\n" + OmegaConf.to_yaml(compose_hydra(expand_overrides(overrides)[0])).rstrip())
    if which in ("job", "all"):
        for number, job in enumerate(jobs):
            if len(jobs) > 1 or which == "all":
                print(f"---\n# job {number + 1} of {len(jobs)}" if len(jobs) > 1 else "---\n# job")
            print(OmegaConf.to_yaml(mask_secrets(job)).rstrip())
