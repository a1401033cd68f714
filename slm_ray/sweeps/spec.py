"""Sweep files: parse one, expand its grid into trials, compose and validate every trial up front.

A sweep file (``sweeps/*.yaml``)::

    name: size_comparison                 # folder under <experiment.output_dir>/sweeps/
    description: SmolLM2 sizes on NQ      # free text, copied into the summary
    overrides: [dataset=nq, dataset.limit=500]          # Hydra overrides shared by every trial
    grid:                                 # the trials are the product of these axes
      model: [smollm2_135m, smollm2_360m] # a config group: its options (conf/model/*.yaml)
      experiment_mode: [no_context, oracle_context, retriever_context]
      retriever: [bm25, dense]            # retriever/corpus axes only multiply retriever_context:
      retriever.k: [1, 3, 5]              #   the other modes run once per remaining combination
      model.temperature: [0.0, 0.7]       # any config key
    exclude:                              # drop the combinations that match every key of a rule
      - {model: [smollm2_360m], retriever: [dense]}
    resources: {cpus: 1, gpus: auto}      # per trial; auto = model.num_gpus on a cluster with GPUs, else 0
    retriever_resources: {cpus: 0, gpus: 0}   # per shared retriever actor
    max_concurrent_trials: auto           # auto: as many as the cluster holds now (on an autoscaling
                                          #   cluster, give the number you want: workers wait for nodes)
    max_failures: 2                       # Tune's retries of a trial whose process was lost (killed,
                                          #   out of memory, node gone); it resumes from its folder

Nothing here imports Ray or loads a model: a bad sweep file is refused (one line naming the trial
and the key, exit 2) before any process starts or any file is written.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Annotated, Any, Sequence

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from slm_ray.composition import GROUPS, compose_config, compose_many, compose_raw, group_options
from slm_ray.config import EXPERIMENT_MODES, ExperimentConfig, format_validation_error, validate_config
from slm_ray.errors import ConfigError, SlmRayError
from slm_ray.store.fingerprints import stable_hash
from slm_ray.store.names import RULE, name_problem, safe_name
from slm_ray.redaction import config_secrets, is_secret_key, override_key

#: Axes that only change what a retriever_context trial retrieves.
RETRIEVAL_GROUPS = ("retriever", "corpus")
#: Keys the sweep sets on every trial itself (experiment.output_dir may be overridden: it is where
#: the sweep folder goes, <experiment.output_dir>/sweeps/<name>; it cannot be a grid axis).
RESERVED_KEYS = ("experiment.name", "experiment.output_dir")
RESERVED_OVERRIDES = ("experiment.name",)
#: Axes already spelled out by the base of a trial name.
NAMED_AXES = frozenset({"model", "model.name", "dataset", "dataset.name", "experiment_mode", "retriever",
                        "retriever.name", "retriever.k"})
#: Within a model, trials start longest first (prompt length drives the cost: passages, then the gold
#: passage, then the question alone), so the last trials to start are short and workers finish together.
LONGEST_FIRST = {"retriever_context": 0, "oracle_context": 1, "no_context": 2}
#: Tune's retries of a trial whose process was lost; an error inside a trial is its result, not retried.
DEFAULT_MAX_FAILURES = 2
_PLAIN_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._=+-]+")


class SweepError(SlmRayError):
    """A sweep file or sweep command the user must fix: printed as one line, exit code 2."""


#: The sweep files shipped in the package (the repository's top-level ``sweeps`` links here).
SHIPPED_SWEEPS = Path(__file__).resolve().parents[1] / "sweep_files"


def shipped_sweeps() -> dict[str, Path]:
    """The shipped sweep files by name: ``slm-ray sweep smoke`` runs ``smoke.yaml`` from any folder."""
    return {path.stem: path for path in sorted(SHIPPED_SWEEPS.glob("*.yaml"))}


def sweep_file(given: str | Path) -> Path:
    """The sweep file ``given`` names: a path, else the name of a shipped sweep (``smoke``)."""
    path = Path(given)
    if path.exists():
        return path
    shipped = shipped_sweeps()
    name = path.stem if path.suffix in (".yaml", ".yml") and path.parent == Path(".") else str(given)
    if name in shipped:
        return shipped[name]
    raise SweepError(f"sweep file not found: {given} (give a path, or the name of a shipped sweep: "
                     f"{', '.join(shipped)}; slm-ray sweep --list)")


def _auto_is_none(value: Any, expected: str) -> Any:
    """``auto`` as None (decided later); any other word is refused, naming what is valid."""
    if isinstance(value, str) and value != "auto":
        raise ValueError(f"expected {expected} or auto")
    return None if value == "auto" else value


#: A GPU count, or ``auto`` (None); an integer >= 1, or ``auto`` (None).
GpusOrAuto = Annotated[float | None, BeforeValidator(partial(_auto_is_none, expected="a number >= 0"))]
CountOrAuto = Annotated[int | None, BeforeValidator(partial(_auto_is_none, expected="an integer >= 1"))]


class _Strict(BaseModel):
    """A part of the sweep file: unknown keys are errors, and so is a boolean where a number goes."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class Resources(_Strict):
    """What one trial actor asks Ray for. ``gpus=None`` means auto (decided once the cluster is known)."""

    cpus: float = Field(1.0, ge=0)
    gpus: GpusOrAuto = Field(None, ge=0)

    @field_validator("gpus")
    @classmethod
    def _whole_beyond_one(cls, value: float | None) -> float | None:
        if value is not None and value > 1 and value != int(value):
            raise ValueError("more than one GPU must be a whole number")
        return value

    def as_dict(self) -> dict[str, Any]:
        return {"cpus": self.cpus, "gpus": "auto" if self.gpus is None else self.gpus}


class RetrieverResources(Resources):
    """What a shared retriever actor asks Ray for: no CPU of its own by default (it waits on queries),
    and no GPU unless given (``auto`` is none)."""

    cpus: float = Field(0.0, ge=0)
    gpus: GpusOrAuto = Field(0.0, ge=0)

    @field_validator("gpus", mode="after")
    @classmethod
    def _auto_is_no_gpu(cls, value: float | None) -> float:
        return 0.0 if value is None else value


class SweepFile(_Strict):
    """The sweep file as written (its keys: the module docstring). The grid, the exclude rules and the
    overrides are checked against the config groups by ``load_sweep``, which knows them."""

    name: str | None = None
    description: str | None = None
    overrides: list[str] = []
    grid: dict[str, Any] | None = None
    exclude: list[dict[str, Any]] = []
    resources: Resources = Resources()
    retriever_resources: RetrieverResources = RetrieverResources()
    max_concurrent_trials: CountOrAuto = Field(None, ge=1)
    max_failures: int = Field(DEFAULT_MAX_FAILURES, ge=0)

    @field_validator("overrides", "exclude", mode="before")
    @classmethod
    def _one_is_a_list(cls, value: Any) -> Any:
        return [] if value is None else [value] if isinstance(value, (str, dict)) else value


@dataclass(frozen=True)
class Trial:
    """One experiment of the sweep: its readable unique name, its grid values and its config."""

    index: int
    name: str
    axes: dict[str, Any]
    overrides: tuple[str, ...]
    config: ExperimentConfig = field(repr=False)

    @property
    def mode(self) -> str:
        return self.config.experiment_mode

    @property
    def uses_retriever(self) -> bool:
        return self.config.experiment_mode == "retriever_context"

    @property
    def model_key(self) -> str:
        """Trials with the same key can share a loaded generator (they differ at most in decoding)."""
        return model_load_key(self.config)

    @property
    def retriever_key(self) -> str | None:
        """Trials with the same key share one retriever actor (None outside retriever_context)."""
        if not self.uses_retriever:
            return None
        from slm_ray.retrieval.service import service_key

        return service_key(self.config)

    def secrets(self) -> set[str]:
        """The secrets this trial's config and overrides hold (``slm_ray.redaction``)."""
        from slm_ray.redaction import override_secrets

        return config_secrets(self.config.model_dump(by_alias=True)) | override_secrets(self.overrides)

    def describe(self, known: set[str] | None = None) -> dict[str, Any]:
        """The trial as recorded (sweep.json, a trial record): every secret masked. ``known``: the
        plan's secrets, when the caller has them already."""
        from slm_ray.redaction import mask_override, mask_secrets

        known = self.secrets() if known is None else known
        cfg = self.config
        return {
            "index": self.index,
            "name": self.name,
            "model": cfg.model.name,
            "dataset": cfg.dataset.name,
            "experiment_mode": cfg.experiment_mode,
            "retriever": cfg.retriever.name if self.uses_retriever else None,
            "k": cfg.retriever.k if self.uses_retriever else None,
            "axes": mask_secrets(self.axes, known),
            "overrides": [mask_override(o, known) for o in self.overrides],
            "answer_settings": self.answer_settings_hash,
        }

    @property
    def answer_settings_hash(self) -> str:
        """What the trial's answers must have been made with (``report --verify`` compares it)."""
        from slm_ray.store.fingerprints import answer_settings, without_resolved

        return stable_hash(without_resolved(answer_settings(self.config.model_dump(by_alias=True))))


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: every trial composed, named and ordered (grouped by model)."""

    name: str
    source: str
    description: str
    overrides: tuple[str, ...]
    cli_overrides: tuple[str, ...]
    grid: dict[str, list[Any]]
    trials: tuple[Trial, ...]
    resources: Resources
    retriever_resources: Resources
    max_concurrent_trials: int | None
    max_failures: int
    sweep_dir: Path

    @property
    def trials_dir(self) -> Path:
        return self.sweep_dir / "trials"

    def secrets(self) -> set[str]:
        """Every secret of the plan: in the trials' configs and in the overrides."""
        return set().union(*(t.secrets() for t in self.trials))

    def to_json(self) -> dict[str, Any]:
        """The plan as sweep.json records it: every secret masked (``slm_ray.redaction``)."""
        from slm_ray.redaction import mask_override, mask_secrets

        known = self.secrets()
        return {
            "name": self.name,
            "source": self.source,
            "description": self.description,
            "overrides": [mask_override(o, known) for o in self.overrides],
            "cli_overrides": [mask_override(o, known) for o in self.cli_overrides],
            "grid": mask_secrets(self.grid, known),
            "resources": self.resources.as_dict(),
            "retriever_resources": self.retriever_resources.as_dict(),
            "max_concurrent_trials": self.max_concurrent_trials,
            "max_failures": self.max_failures,
            "sweep_dir": str(self.sweep_dir),
            "trials": [t.describe(known) for t in self.trials],
        }

    def render(self) -> str:
        """The plan as text: one line per trial with the overrides that reproduce it alone (a secret
        as ``***``: give it again as the sweep file does)."""
        from slm_ray.composition import user_config_dirs
        from slm_ray.redaction import mask_override

        known = self.secrets()
        lines = [f"sweep {self.name}: {len(self.trials)} trials -> {self.sweep_dir} (from {self.source})"]
        width = max(len(t.name) for t in self.trials)
        folders = "".join(f"--config-dir {folder} " for folder in user_config_dirs())
        for t in self.trials:
            overrides = " ".join(mask_override(o, known) for o in t.overrides)
            lines.append(f"  {t.index + 1:>3}  {t.name:<{width}}  slm-ray run {folders}{overrides}")
        return "\n".join(lines)


def hydra_value(value: Any) -> str:
    """A YAML value written as a Hydra override value (quoted when it needs to be)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{hydra_value(v)}" for k, v in value.items()) + "}"
    text = str(value)
    if _PLAIN_VALUE.match(text) and text.lower() not in ("true", "false", "null"):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def is_retrieval_axis(axis: str) -> bool:
    return axis.split(".")[0] in RETRIEVAL_GROUPS


def load_sweep(path: str | Path, cli_overrides: Sequence[str] = (), name: str | None = None) -> SweepPlan:
    """Read, expand and validate a sweep file; raise SweepError naming what is wrong."""
    path = sweep_file(path)
    where = str(path)
    try:
        spec = SweepFile.model_validate(_read_yaml(path))
    except ValidationError as exc:
        raise SweepError(f"{where}: {format_validation_error(exc, SweepFile)}") from None
    sweep_name = name or spec.name or path.stem
    problem = name_problem(sweep_name)
    if problem:
        raise SweepError(f"{where}: name={sweep_name!r} {problem} ({RULE})")
    overrides = spec.overrides
    cli = [str(o) for o in cli_overrides]
    grid = _parse_grid(spec.grid, where)
    for source, items in (("overrides", overrides), ("command line", cli)):
        for item in items:
            if "=" not in item:
                raise SweepError(f"{where}: {source}: cannot parse override {item!r} (expected key=value)")
            key = override_key(item)
            if key in RESERVED_OVERRIDES:
                raise SweepError(f"{where}: {source}: {key} is set by the sweep for every trial "
                                 "(trials go to <experiment.output_dir>/sweeps/<name>/trials/<trial name>)")
            if key in grid:
                raise SweepError(f"{where}: {source}: {item!r} sets {key}, which is a grid axis of this sweep "
                                 "(change the grid instead)")
    rules = _parse_exclude(spec.exclude, grid, where)

    combos = _expand(grid, rules, _default_mode(overrides + cli), where)
    user_project = any(override_key(o) == "tracker.project" for o in overrides + cli)
    composed = []
    for combo, raw_cfg in zip(combos, _compose_trials(combos, overrides, cli, where)):
        trial_overrides = [*overrides, *(f"{k}={hydra_value(v)}" for k, v in combo.items()), *cli]
        try:
            cfg = validate_config(raw_cfg)
        except ConfigError as exc:
            raise SweepError(f"{where}: trial ({_describe_combo(combo)}): {exc}") from None
        composed.append((combo, trial_overrides, cfg))

    base_output = composed[0][2].experiment.output_dir
    sweep_dir = Path(base_output) / "sweeps" / sweep_name
    trials_dir = sweep_dir / "trials"
    names = [trial_name_for(cfg, combo) for combo, _, cfg in composed]
    if len(set(names)) < len(names):  # file names of path values collide: spell the paths out
        names = [trial_name_for(cfg, combo, short_paths=False) for combo, _, cfg in composed]
    named: dict[str, dict[str, Any]] = {}
    staged = []
    for (combo, trial_overrides, cfg), trial_name in zip(composed, names):
        if trial_name in named:
            raise SweepError(f"{where}: trials ({_describe_combo(named[trial_name])}) and ({_describe_combo(combo)}) "
                             f"would both be named {trial_name!r}; make them differ or exclude one")
        named[trial_name] = combo
        forced = [f"experiment.output_dir={hydra_value(str(trials_dir))}", f"experiment.name={hydra_value(trial_name)}"]
        data = cfg.model_dump(by_alias=True)
        data["experiment"]["output_dir"] = str(trials_dir)
        data["experiment"]["name"] = trial_name
        if cfg.tracker.type == "clearml":
            if not user_project:
                data["tracker"]["project"] = f"slm-ray/{sweep_name}"
                forced.append(f"tracker.project={hydra_value(data['tracker']['project'])}")
            if f"sweep:{sweep_name}" not in data["tracker"]["tags"]:
                data["tracker"]["tags"] = [*data["tracker"]["tags"], f"sweep:{sweep_name}"]
                forced.append(f"tracker.tags={hydra_value(data['tracker']['tags'])}")
        try:
            final = validate_config(data)
        except ConfigError as exc:
            raise SweepError(f"{where}: trial {trial_name}: {exc}") from None
        staged.append((combo, tuple(trial_overrides + forced), final, trial_name))

    trials = tuple(Trial(i, trial_name, combo, trial_overrides, cfg)
                   for i, (combo, trial_overrides, cfg, trial_name) in enumerate(_order(staged)))
    return SweepPlan(name=sweep_name, source=str(path), description=spec.description or "",
                     overrides=tuple(overrides), cli_overrides=tuple(cli), grid=grid, trials=trials,
                     resources=spec.resources, retriever_resources=spec.retriever_resources,
                     max_concurrent_trials=spec.max_concurrent_trials, max_failures=spec.max_failures,
                     sweep_dir=sweep_dir)


def _compose_trials(combos: list[dict[str, Any]], overrides: list[str], cli: list[str],
                    where: str) -> list[dict[str, Any]]:
    """Every trial's composed config: Hydra composes once per distinct choice of config-group options
    (``model=...``, ``retriever=...``); the other axes are values set on that composition."""
    choices = [[f"{k}={hydra_value(v)}" for k, v in combo.items() if k in GROUPS] for combo in combos]
    values = [{k: v for k, v in combo.items() if k not in GROUPS} for combo in combos]
    try:
        return compose_many([*overrides, *cli], choices, values)
    except ConfigError as exc:  # which trial: the first whose own composition fails the same way
        for combo in combos:
            try:
                compose_config([*overrides, *(f"{k}={hydra_value(v)}" for k, v in combo.items()), *cli])
            except ConfigError as trial_exc:
                raise SweepError(f"{where}: trial ({_describe_combo(combo)}): {trial_exc}") from None
        raise SweepError(f"{where}: {exc}") from None


def trial_name_for(cfg: ExperimentConfig, combo: dict[str, Any], short_paths: bool = True) -> str:
    """``<model>-<dataset>-<mode>[-<retriever>-k<k>]`` plus ``key=value`` for every other axis
    (a path value by its file name, unless two trials would then share a name)."""
    parts = [cfg.model.name, cfg.dataset.name, cfg.experiment_mode]
    if cfg.experiment_mode == "retriever_context":
        parts += [cfg.retriever.name, f"k{cfg.retriever.k}"]
    for axis, value in combo.items():
        if axis in NAMED_AXES:
            continue
        if is_secret_key(axis) or config_secrets(value):
            parts.append(f"{axis}=secret{stable_hash(value, 6)}")  # a folder name is no place for a secret
            continue
        text = json.dumps(value) if isinstance(value, (list, dict)) else str(value)
        if short_paths and isinstance(value, str) and ("/" in text or "\\" in text):
            text = text.replace("\\", "/").rstrip("/").rsplit("/", 1)[-1] or text
        parts.append(f"{axis}={text}")
    return safe_name("-".join(_UNSAFE_NAME_CHARS.sub("_", p) for p in parts))


def model_load_key(cfg: ExperimentConfig) -> str:
    """Equal for trials whose models load the same (decoding settings aside)."""
    from slm_ray.generation.base import load_settings

    return stable_hash(load_settings(cfg.model))


def _order(staged: list[tuple]) -> list[tuple]:
    """Group trials by model (first appearance) so each model loads once per worker; within a model,
    longest first (``LONGEST_FIRST``, more passages before fewer), then sweep-file order."""
    load_keys = [model_load_key(cfg) for _, _, cfg, _ in staged]
    first_seen: dict[str, int] = {}
    for i, load_key in enumerate(load_keys):
        first_seen.setdefault(load_key, i)

    def key(pair: tuple[int, tuple]) -> tuple:
        position, (_, _, cfg, _) = pair
        k = cfg.retriever.k if cfg.experiment_mode == "retriever_context" else 0
        return (first_seen[load_keys[position]], LONGEST_FIRST[cfg.experiment_mode], -k, position)

    return [item for _, item in sorted(enumerate(staged), key=key)]


class _DuplicateKey(Exception):
    """A mapping of a sweep file that names one key twice (PyYAML would keep the last silently)."""


def _strict_loader() -> type:
    """PyYAML's safe loader, refusing a key given twice in one mapping: a second ``grid.model``
    would replace the first, and the trials of its values would vanish without a word."""
    import yaml

    class StrictLoader(yaml.SafeLoader):
        def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base`, then keys overriding it
                    continue
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                if isinstance(key, (str, int, float, bool)) and key in seen:
                    raise _DuplicateKey(f"line {line}: key {key!r} is given twice in one mapping (first on line "
                                        f"{seen[key]}): YAML would keep only the last; merge them into one")
                seen.setdefault(key, line)
            return super().construct_mapping(node, deep=deep)

    return StrictLoader


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml

    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_strict_loader())  # noqa: S506 - a safe loader
    except _DuplicateKey as exc:
        raise SweepError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise SweepError(f"{path}: not valid YAML{at} ({problem})") from None
    except UnicodeDecodeError:
        raise SweepError(f"{path}: not a text file") from None
    if not isinstance(raw, dict):
        raise SweepError(f"{path}: expected a mapping with name, overrides and grid, "
                         f"got {type(raw).__name__ if raw is not None else 'an empty file'}")
    return raw


def _parse_grid(grid: dict[str, Any] | None, where: str) -> dict[str, list[Any]]:
    if not grid:
        raise SweepError(f"{where}: grid is empty (give at least one axis, e.g. grid: {{model: [tiny_llama]}})")
    parsed: dict[str, list[Any]] = {}
    for axis, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{where}: grid.{axis} must be a non-empty list of values")
        _check_axis(axis, values, where)
        parsed[axis] = values
    return parsed


def _check_axis(axis: str, values: list[Any], where: str) -> None:
    head = axis.split(".")[0]
    if axis in RESERVED_KEYS:
        raise SweepError(f"{where}: grid.{axis}: set by the sweep for every trial, cannot be an axis")
    if axis in GROUPS:
        options = group_options(axis)
        for value in values:
            if str(value) not in options:
                raise SweepError(f"{where}: grid.{axis}: unknown {axis} option {value!r} (valid: {', '.join(options)})")
    elif axis == "experiment_mode":
        for value in values:
            if value not in EXPERIMENT_MODES:
                raise SweepError(f"{where}: grid.experiment_mode: unknown mode {value!r} "
                                 f"(valid: {', '.join(EXPERIMENT_MODES)})")
    elif head not in GROUPS and head != "experiment":
        raise SweepError(f"{where}: grid axis {axis!r} is not a config group or key (valid: experiment_mode, "
                         f"{', '.join(GROUPS)}, or a key under them such as retriever.k)")
    seen = set()
    for value in values:
        marker = json.dumps(value, sort_keys=True, default=str)
        if marker in seen:
            raise SweepError(f"{where}: grid.{axis} lists {value!r} twice")
        seen.add(marker)


def _parse_exclude(rules: list[dict[str, Any]], grid: dict[str, list[Any]], where: str) -> list[dict[str, list[Any]]]:
    parsed = []
    for i, rule in enumerate(rules):
        if not rule:
            raise SweepError(f"{where}: exclude[{i}] must be a non-empty mapping of grid axis -> values")
        clean: dict[str, list[Any]] = {}
        for axis, values in rule.items():
            if axis not in grid:
                raise SweepError(f"{where}: exclude[{i}]: {axis!r} is not a grid axis (axes: {', '.join(grid)})")
            values = values if isinstance(values, list) else [values]
            for value in values:
                if value not in grid[axis]:
                    raise SweepError(f"{where}: exclude[{i}].{axis}: {value!r} is not one of the grid's values "
                                     f"({', '.join(map(str, grid[axis]))})")
            clean[axis] = values
        parsed.append(clean)
    return parsed


def _default_mode(overrides: Sequence[str]) -> str:
    """The experiment_mode of trials whose grid does not set it (overrides first, then the config default)."""
    for item in reversed(overrides):
        if override_key(item) == "experiment_mode":
            return item.split("=", 1)[1].strip().strip("'\"")
    return str(compose_raw([]).get("experiment_mode", "no_context"))


def _expand(grid: dict[str, list[Any]], rules: list[dict[str, list[Any]]], default_mode: str,
            where: str) -> list[dict[str, Any]]:
    """Grid product, minus excluded combinations, with retrieval axes collapsed outside retriever_context."""
    axes = list(grid)
    combos: list[dict[str, Any]] = []
    seen: set[str] = set()
    for values in itertools.product(*(grid[a] for a in axes)):
        combo = dict(zip(axes, values))
        if any(all(combo[a] in vals for a, vals in rule.items()) for rule in rules):
            continue
        if combo.get("experiment_mode", default_mode) != "retriever_context":
            combo = {a: v for a, v in combo.items() if not is_retrieval_axis(a)}
        marker = json.dumps(combo, sort_keys=True, default=str)
        if marker not in seen:
            seen.add(marker)
            combos.append(combo)
    if not combos:
        raise SweepError(f"{where}: every combination of the grid is excluded: no trials to run")
    return combos


def _describe_combo(combo: dict[str, Any]) -> str:
    """``model=x, retriever.k=3`` for a message; a secret axis value as ``***``."""
    from slm_ray.redaction import mask_secrets

    return ", ".join(f"{k}={v}" for k, v in mask_secrets(combo, config_secrets(combo)).items()) or "no axes"
