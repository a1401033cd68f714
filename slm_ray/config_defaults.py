"""The typed schema's defaults, registered in Hydra's ConfigStore: each default is declared once.

``slm_ray.config`` declares every key and its default; the YAML options under ``conf/`` set only what
differs. Hydra needs the defaults as configs to merge options onto (so that ``model.batch_size=8``
overrides a key the option file does not spell), so each section's defaults are registered here
as a structured config built from the pydantic model, in the group whose options extend it:

    model/_defaults       every model option:      defaults: [_defaults, _self_]
    dataset/_defaults     corpus/_defaults   prompt/_defaults   tracker/_defaults
    retriever/_bm25  retriever/_dense  retriever/_hybrid      (a retriever option extends its type's)
    experiment/_defaults  the ``experiment:`` section (config.yaml lists it)

A key without a default in the schema is ``???`` here: an option must set it (Hydra names the key
when one does not). Values are typed ``Any`` on Hydra's side: pydantic checks them after
composition, with the one-line errors of ``slm_ray.config``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from pydantic import BaseModel

from slm_ray import config as schema

#: (group, option name, section model) of every registered defaults node.
DEFAULTS_NODES: tuple[tuple[str, str, type[BaseModel]], ...] = (
    ("model", "_defaults", schema.ModelConfig),
    ("dataset", "_defaults", schema.DatasetConfig),
    ("corpus", "_defaults", schema.CorpusConfig),
    ("prompt", "_defaults", schema.PromptConfig),
    ("tracker", "_defaults", schema.TrackerConfig),
    ("retriever", "_bm25", schema.BM25Config),
    ("retriever", "_dense", schema.DenseConfig),
    ("retriever", "_hybrid", schema.HybridConfig),
    ("experiment", "_defaults", schema.ExperimentSection),
)
_registered: list[bool] = []


def plain_default(value: Any) -> Any:
    """A schema default as YAML would write it: sections as dicts, tuples as lists."""
    if isinstance(value, BaseModel):
        return {key: plain_default(v) for key, v in value.model_dump(by_alias=True).items()}
    if isinstance(value, (tuple, list)):
        return [plain_default(v) for v in value]
    if isinstance(value, dict):
        return {key: plain_default(v) for key, v in value.items()}
    return value


def schema_defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Key (as written in YAML, ``_target_`` for ``target``) -> default, for the keys that have one."""
    return {info.alias or name: plain_default(info.get_default(call_default_factory=True))
            for name, info in model.model_fields.items() if not info.is_required()}


def defaults_dataclass(model: type[BaseModel]) -> type:
    """A dataclass of ``model``'s keys with its defaults (``???`` where it has none); a nested
    section is a nested dataclass, so a typo in ``retriever.dense.*`` is an unknown key too."""
    from omegaconf import MISSING

    fields: list[tuple[str, Any, Any]] = []
    for name, info in model.model_fields.items():
        key = info.alias or name
        nested = info.annotation if isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel) else None
        if nested is not None:
            nested_defaults = defaults_dataclass(nested)
            fields.append((key, nested_defaults, dataclasses.field(default_factory=nested_defaults)))
        elif info.is_required():
            fields.append((key, Any, dataclasses.field(default=MISSING)))
        else:
            value = plain_default(info.get_default(call_default_factory=True))
            fields.append((key, Any, dataclasses.field(default_factory=lambda value=value: _copy(value))))
    return dataclasses.make_dataclass(f"{model.__name__}Defaults", fields)


def _copy(value: Any) -> Any:
    import copy

    return copy.deepcopy(value)


def register_defaults() -> None:
    """Put every section's defaults into Hydra's ConfigStore (once per process)."""
    if _registered:
        return
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    for group, name, model in DEFAULTS_NODES:
        store.store(group=group, name=name, node=defaults_dataclass(model))
    _registered.append(True)
