"""Each default is declared once: in the typed schema (slm_ray/config.py), registered for Hydra by
slm_ray/config_defaults.py; the YAML options set only what their option changes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from slm_ray import config as schema
from slm_ray.composition import CONFIG_DIR, compose_config, compose_raw, use_config_dirs
from slm_ray.config_defaults import DEFAULTS_NODES, schema_defaults
from slm_ray.errors import ConfigError

GROUP_MODELS = {group: model for group, name, model in DEFAULTS_NODES if name == "_defaults"}
RETRIEVER_MODELS = {name: model for group, name, model in DEFAULTS_NODES if group == "retriever"}


def _option_files() -> list[Path]:
    return sorted(p for p in CONFIG_DIR.glob("*/*.yaml"))


def _section_model(path: Path) -> type:
    """The schema section an option file fills: its group's, or for a retriever the type its
    defaults list extends (directly, or through another option such as dense_hnsw -> dense)."""
    group = path.parent.name
    if group != "retriever":
        return GROUP_MODELS[group]
    for parent in yaml.safe_load(path.read_text()).get("defaults", []):
        if parent in RETRIEVER_MODELS:
            return RETRIEVER_MODELS[parent]
        if parent != "_self_":
            return _section_model(path.parent / f"{parent}.yaml")
    raise AssertionError(f"{path} extends no retriever type")


def _repeated_defaults(values: dict[str, Any], model: type, where: str) -> list[str]:
    """Keys of ``values`` set to exactly the schema's default (nested sections compared key by key)."""
    repeated = []
    defaults = schema_defaults(model)
    for key, value in values.items():
        if key == "defaults" or key not in defaults:
            continue
        annotation = model.model_fields[key].annotation if key in model.model_fields else None
        if isinstance(value, dict) and isinstance(annotation, type) and issubclass(annotation, schema.Section):
            repeated += _repeated_defaults(value, annotation, f"{where}.{key}")
        elif value == defaults[key]:
            repeated.append(f"{where}.{key}={value!r}")
    return repeated


@pytest.mark.parametrize("path", _option_files(), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_no_option_file_repeats_a_schema_default(path: Path) -> None:
    values = yaml.safe_load(path.read_text()) or {}
    assert _repeated_defaults(values, _section_model(path), f"{path.parent.name}/{path.name}") == []


def test_every_option_extends_its_sections_defaults() -> None:
    """An option that did not list the defaults node would miss every key it does not set."""
    for path in _option_files():
        parents = yaml.safe_load(path.read_text()).get("defaults", [])
        assert parents and parents[-1] == "_self_", path
        assert any(p.startswith("_") or (path.parent / f"{p}.yaml").exists() for p in parents[:-1]), path


def test_config_yaml_declares_no_section_default_and_no_defaults_file_exists() -> None:
    top = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    assert "experiment" not in top  # the section's defaults come from ExperimentSection
    assert {"experiment": "_defaults"} in top["defaults"]
    assert not list(CONFIG_DIR.glob("*/_*.yaml")), "a YAML file of defaults declares them a second time"


def test_composed_defaults_are_the_schemas() -> None:
    """What a run gets for a key no option sets is the schema's default, section by section."""
    raw = compose_raw(["experiment_mode=retriever_context", "retriever=hybrid", "corpus=file", "corpus.path=x.jsonl",
                       "dataset=file", "dataset.path=q.jsonl", "model=smollm2_360m"])
    for section, model in (("model", schema.ModelConfig), ("experiment", schema.ExperimentSection),
                           ("retriever", schema.HybridConfig), ("corpus", schema.CorpusConfig),
                           ("dataset", schema.DatasetConfig), ("tracker", schema.TrackerConfig)):
        for key, default in schema_defaults(model).items():
            assert key in raw[section], f"{section}.{key}"
            if key not in ("name", "type", "_target_"):
                assert raw[section][key] == default, f"{section}.{key}"


def test_the_three_that_diverged_have_one_source() -> None:
    """max_model_len was 4096 in YAML and None in the schema; the fields maps lived in YAML, the
    schema and the code; prompt.system's only declaration is the option that sets it."""
    cfg = compose_config(["model=smollm2_360m"])
    assert cfg.model.max_model_len == schema.ModelConfig.model_fields["max_model_len"].default == 4096
    assert compose_config(["model=smollm2_360m", "model.max_model_len=null"]).model.max_model_len is None
    assert schema.PromptConfig.model_fields["system"].default is None
    assert cfg.prompt.system == yaml.safe_load((CONFIG_DIR / "prompt" / "default.yaml").read_text())["system"]
    corpus = compose_config(["corpus=file", "corpus.path=x.jsonl", "corpus.fields.text=contents"]).corpus
    assert corpus.fields == {**schema.CORPUS_FIELDS, "text": "contents"}
    dataset = compose_config(["dataset=file", "dataset.path=q.jsonl", "dataset.fields.question=q"]).dataset
    assert dataset.fields == {**schema.DATASET_FIELDS, "question": "q"}
    # a partial map written by hand (a sweep value, a test) is completed from the same declaration
    assert schema.CorpusConfig(name="c", path="p", fields={"id": "pid"}).fields == {**schema.CORPUS_FIELDS, "id": "pid"}


def test_a_users_options_extend_the_schema_defaults(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "retriever").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("defaults: [_defaults, _self_]\nname: mine\npath: org/mine\n")
    (tmp_path / "retriever" / "mine.yaml").write_text("defaults: [_dense, _self_]\nname: mine\nnprobe: 4\n")
    (tmp_path / "model" / "typo.yaml").write_text("defaults: [_defaults, _self_]\nname: t\npath: o/t\nbatch_sise: 8\n")
    try:
        use_config_dirs([tmp_path])
        cfg = compose_config(["model=mine", "retriever=mine", "experiment_mode=retriever_context"])
        assert (cfg.model.batch_size, cfg.model.max_model_len) == (16, 4096)
        assert (cfg.retriever.type, cfg.retriever.nprobe, cfg.retriever.index_type) == ("dense", 4, "flat")
        with pytest.raises(ConfigError) as err:
            compose_config(["model=typo"])
        assert str(err.value) == "unknown config key 'model.batch_sise' (set in model/typo.yaml)"
    finally:
        use_config_dirs([])
