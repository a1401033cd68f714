"""Sweep files: parsing, grid expansion, validation of every trial, naming, ordering, CLI refusals.

No Ray here: a sweep is refused before anything starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray.composition import compose_config
from slm_ray.sweep import main as sweep_main
from slm_ray.sweep import split_flags
from slm_ray.sweeps.spec import SweepError, hydra_value, load_sweep

REPO = Path(__file__).resolve().parents[1]
SHIPPED = {"size_comparison": 9, "family_comparison": 18, "retriever_comparison": 26, "simpleqa": 9, "smoke": 12}


def _sweep(tmp_path: Path, text: str, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_sweeps_validate(name: str) -> None:
    plan = load_sweep(REPO / "sweeps" / f"{name}.yaml")
    assert plan.name == name
    assert len(plan.trials) == SHIPPED[name]
    names = [t.name for t in plan.trials]
    assert len(set(names)) == len(names)
    for trial in plan.trials:
        assert trial.config.experiment.output_dir == f"outputs/sweeps/{name}/trials"
        assert trial.config.experiment.name == trial.name
        if trial.config.tracker.type == "clearml":
            assert trial.config.tracker.project == f"slm-ray/{name}"


def test_smoke_sweep_is_offline_and_small() -> None:
    plan = load_sweep(REPO / "sweeps" / "smoke.yaml")
    assert {t.config.model.name for t in plan.trials} == {"smollm2_135m_gguf", "tiny_llama", "tiny_qwen3"}
    assert {t.mode for t in plan.trials} == {"no_context", "oracle_context", "retriever_context"}
    assert {t.config.retriever.type for t in plan.trials if t.uses_retriever} == {"bm25", "dense"}
    assert all(t.config.dataset.limit <= 20 and t.config.dataset.path == "builtin" for t in plan.trials)
    assert all(t.config.model.source in ("gguf_package", "tiny") for t in plan.trials)


def test_simpleqa_sweep_has_no_oracle() -> None:
    plan = load_sweep(REPO / "sweeps" / "simpleqa.yaml")
    assert {t.mode for t in plan.trials} == {"no_context", "retriever_context"}


def test_expansion_names_order_and_reproducible_overrides(tmp_path: Path) -> None:
    path = _sweep(tmp_path, """
name: demo
overrides: [dataset.limit=5, tracker=clearml]
grid:
  experiment_mode: [retriever_context, no_context, oracle_context]
  model: [tiny_llama, tiny_qwen3]
  retriever: [bm25, dense]
  retriever.k: [1, 3]
  model.temperature: [0.0]
""")
    plan = load_sweep(path, ["model.batch_size=4"])
    # retriever axes multiply retriever_context only: 2 models x (4 + 1 + 1)
    assert len(plan.trials) == 12
    names = [t.name for t in plan.trials]
    assert names[:6] == [  # longest first within a model: most passages, then the gold passage, then none
        "tiny_llama-nq-retriever_context-bm25-k3-model.temperature=0.0",
        "tiny_llama-nq-retriever_context-dense-k3-model.temperature=0.0",
        "tiny_llama-nq-retriever_context-bm25-k1-model.temperature=0.0",
        "tiny_llama-nq-retriever_context-dense-k1-model.temperature=0.0",
        "tiny_llama-nq-oracle_context-model.temperature=0.0",
        "tiny_llama-nq-no_context-model.temperature=0.0",
    ]
    assert all(t.config.model.name == "tiny_qwen3" for t in plan.trials[6:])  # grouped by model
    assert [t.index for t in plan.trials] == list(range(12))
    for trial in plan.trials:  # composed once per model x retriever, each equal to its own composition
        assert compose_config(list(trial.overrides)) == trial.config
        assert trial.config.model.batch_size == 4
        assert trial.config.tracker.project == "slm-ray/demo"
    assert plan.sweep_dir == Path("outputs/sweeps/demo")
    no_context = plan.trials[5]
    assert no_context.retriever_key is None and "retriever" not in no_context.axes


def test_a_large_grid_is_composed_once_per_choice_of_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import slm_ray.composition as composition

    calls: list[list[str]] = []
    real = composition._compose_unresolved
    monkeypatch.setattr(composition, "_compose_unresolved", lambda overrides: calls.append(list(overrides)) or real(overrides))
    temperatures = ", ".join(str(i / 100) for i in range(25))
    path = _sweep(tmp_path, f"""
name: big
overrides: [dataset.limit=5, experiment_mode=retriever_context]
grid:
  model: [tiny_llama, tiny_qwen3]
  retriever: [bm25, dense]
  model.temperature: [{temperatures}]
  retriever.k: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
""")
    plan = load_sweep(path)
    assert len(plan.trials) == 1000
    assert len(calls) == 4  # two models x two retrievers, not a thousand compositions
    assert {(t.config.model.temperature, t.config.retriever.k) for t in plan.trials} == {
        (i / 100, k) for i in range(25) for k in range(1, 11)}


def test_an_unknown_key_axis_names_the_trial_and_the_key(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "name: typo\ngrid:\n  model: [tiny_llama]\n  model.temprature: [0.1]\n")
    with pytest.raises(SweepError, match=r"trial \(model=tiny_llama, model.temprature=0.1\): unknown config key 'model.temprature'"):
        load_sweep(path)


def test_decoding_axes_share_a_loaded_model(tmp_path: Path) -> None:
    path = _sweep(tmp_path, """
grid:
  model: [tiny_llama, tiny_qwen3]
  model.temperature: [0.0, 0.7]
  model.max_new_tokens: [8, 16]
""")
    plan = load_sweep(path)
    by_model = {}
    for trial in plan.trials:
        by_model.setdefault(trial.config.model.name, set()).add(trial.model_key)
    assert len(plan.trials) == 8 and {m: len(k) for m, k in by_model.items()} == {"tiny_llama": 1, "tiny_qwen3": 1}
    assert len(load_sweep(_sweep(tmp_path, "grid: {model.dtype: [float32, bfloat16]}\n", "d.yaml")).trials) == 2
    dtypes = load_sweep(tmp_path / "d.yaml").trials
    assert dtypes[0].model_key != dtypes[1].model_key  # other weights: loaded again


def test_name_option_and_user_project(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "grid: {model: [tiny_llama]}\noverrides: [tracker.project=mine, 'experiment.output_dir=/x/y']\n")
    plan = load_sweep(path, name="other")
    assert plan.name == "other" and plan.sweep_dir == Path("/x/y/sweeps/other")
    assert plan.trials[0].config.tracker.project == "mine"
    assert plan.trials[0].config.experiment.output_dir == "/x/y/sweeps/other/trials"


def test_exclude_rules(tmp_path: Path) -> None:
    path = _sweep(tmp_path, """
grid:
  model: [tiny_llama, tiny_qwen3]
  experiment_mode: [no_context, retriever_context]
  retriever: [bm25, dense]
exclude:
  - {model: tiny_qwen3, retriever: [dense]}
  - {experiment_mode: [no_context], model: [tiny_llama]}
""")
    names = [t.name for t in load_sweep(path).trials]
    assert names == ["tiny_llama-nq-retriever_context-bm25-k5", "tiny_llama-nq-retriever_context-dense-k5",
                     "tiny_qwen3-nq-retriever_context-bm25-k5", "tiny_qwen3-nq-no_context"]


def test_path_values_are_named_by_file(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "grid: {model: [tiny_llama], dataset.path: [builtin, /data/a/nq_dev.jsonl]}\n")
    names = [t.name for t in load_sweep(path).trials]
    assert names == ["tiny_llama-nq-no_context-dataset.path=builtin", "tiny_llama-nq-no_context-dataset.path=nq_dev.jsonl"]
    clash = _sweep(tmp_path, "grid: {model: [tiny_llama], dataset.path: [/a/q.jsonl, /b/q.jsonl]}\n", "c.yaml")
    names = [t.name for t in load_sweep(clash).trials]
    assert names == ["tiny_llama-nq-no_context-dataset.path=_a_q.jsonl", "tiny_llama-nq-no_context-dataset.path=_b_q.jsonl"]


@pytest.mark.parametrize("text, message", [
    ("grid: [model\n", "not valid YAML at line"),
    ("- a\n- b\n", "expected a mapping"),
    ("", "expected a mapping"),
    ("name: x\n", "grid is empty"),
    ("grid: {}\n", "grid is empty"),
    ("grid: {model: []}\n", "grid.model must be a non-empty list"),
    ("grid: {modle: [tiny_llama]}\n", "grid axis 'modle' is not a config group or key"),
    ("grid: {model: [tiny_lama]}\n", "grid.model: unknown model option 'tiny_lama' (valid:"),
    ("grid: {experiment_mode: [closed_book]}\n", "unknown mode 'closed_book'"),
    ("grid: {model: [tiny_llama], model.temprature: [0.5]}\n",
     "trial (model=tiny_llama, model.temprature=0.5): unknown config key 'model.temprature'"),
    ("grid: {model: [tiny_llama], model.temperature: [0.0, -1.0]}\n",
     "trial (model=tiny_llama, model.temperature=-1.0): model.temperature=-1.0"),
    ("grid: {dataset: [nq, simpleqa], experiment_mode: [oracle_context]}\n",
     "trial (dataset=simpleqa, experiment_mode=oracle_context): experiment_mode=oracle_context needs gold passages"),
    ("grid: {model: [tiny_llama, tiny_qwen3], model.name: [same]}\n", "would both be named 'same-nq-no_context'"),
    ("grid: {model: [tiny_llama, tiny_llama]}\n", "grid.model lists 'tiny_llama' twice"),
    ("grid: {model: [tiny_llama]}\nexclude: [{retriever: [bm25]}]\n", "exclude[0]: 'retriever' is not a grid axis"),
    ("grid: {model: [tiny_llama]}\nexclude: [{model: [tiny_qwen3]}]\n", "exclude[0].model: 'tiny_qwen3' is not one"),
    ("grid: {model: [tiny_llama]}\nexclude: [{model: [tiny_llama]}]\n", "every combination of the grid is excluded"),
    ("grid: {model: [tiny_llama]}\nresources: {gpu: 1}\n", "unknown key 'gpu'"),
    ("grid: {model: [tiny_llama]}\nresources: {gpus: -1}\n", "resources.gpus=-1"),
    ("grid: {model: [tiny_llama]}\nmax_concurrent_trials: 0\n", "max_concurrent_trials=0"),
    ("grid: {model: [tiny_llama]}\nmax_concurrent_trials: two\n", "max_concurrent_trials='two': expected an integer >= 1 or auto"),
    ("grid: {model: [tiny_llama]}\nmax_failures: yes\n", "max_failures=true: Input should be a valid integer"),
    ("grid: {model: [tiny_llama]}\nresources: {cpus: true}\n", "resources.cpus=true"),
    ("grid: {model: [tiny_llama]}\nresources: {gpus: many}\n", "resources.gpus='many': expected a number >= 0 or auto"),
    ("grid: {model: [tiny_llama]}\nresources: {gpus: 1.5}\n", "more than one GPU must be a whole number"),
    ("grid: {model: [tiny_llama]}\nresources: {gpu: 1}\n", "resources: unknown key 'gpu' (valid: cpus, gpus)"),
    ("grid: [model]\n", "grid: Input should be a valid dictionary"),
    ("grid: {model: [tiny_llama]}\noverrides: [5]\n", "overrides.0=5: Input should be a valid string"),
    ("grid: {model: [tiny_llama]}\nwhat: 1\n", "unknown key 'what'"),
    ("grid: {experiment.name: [a]}\n", "set by the sweep for every trial"),
    ("name: ../x\ngrid: {model: [tiny_llama]}\n", "contains a path separator"),
    ("grid: {model: [tiny_llama]}\noverrides: [dataset=nope]\n", "unknown dataset option 'nope'"),
])
def test_bad_sweep_files_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = _sweep(tmp_path, text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text, message", [
    ("grid:\n  model: [tiny_llama]\n  experiment_mode: [no_context]\n  model: [tiny_qwen3]\n",
     "line 4: key 'model' is given twice in one mapping (first on line 2)"),
    ("name: a\ngrid: {model: [tiny_llama]}\nname: b\n", "line 3: key 'name' is given twice"),
    ("grid: {model: [tiny_llama, tiny_qwen3], model.temperature: [0.0, 0.5]}\n"
     "exclude:\n  - {model: [tiny_llama], model: [tiny_qwen3]}\n", "line 3: key 'model' is given twice"),
    ("grid: {model: [tiny_llama]}\nresources: {cpus: 1, cpus: 2}\n", "key 'cpus' is given twice"),
    ("grid: {model: [tiny_llama], dataset.limit: [true]}\n", "dataset.limit=true: a boolean is not a number"),
    ("grid: {model: [tiny_llama]}\noverrides: [dataset.sample=1]\n", "dataset.sample=1: a number is not a boolean"),
])
def test_a_duplicate_key_or_a_mistyped_value_in_a_sweep_file_is_refused(tmp_path: Path, text: str,
                                                                        message: str) -> None:
    """Issue 19: PyYAML kept the last of two keys (a grid axis lost its values without a word)."""
    path = _sweep(tmp_path, text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    assert message in str(info.value) and str(path) in str(info.value) and "\n" not in str(info.value)


def test_a_duplicate_axis_stops_the_sweep_command_with_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, "grid:\n  model: [tiny_llama]\n  model: [tiny_qwen3]\n")
    assert sweep_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "key 'model' is given twice" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "outputs").exists()


def test_sweep_file_defaults_and_auto(tmp_path: Path) -> None:
    plan = load_sweep(_sweep(tmp_path, "grid: {model: [tiny_llama, tiny_qwen3]}\noverrides: dataset.limit=3\n"
                                       "exclude: {model: tiny_qwen3}\nretriever_resources: {gpus: auto}\n"))
    assert plan.resources.as_dict() == {"cpus": 1.0, "gpus": "auto"}
    assert plan.retriever_resources.as_dict() == {"cpus": 0.0, "gpus": 0.0}  # auto: no GPU for a retriever
    assert (plan.max_concurrent_trials, plan.max_failures) == (None, 2)
    assert plan.overrides == ("dataset.limit=3",) and plan.trials[0].config.dataset.limit == 3
    assert [t.config.model.name for t in plan.trials] == ["tiny_llama"]  # a single rule is a list of one


def test_yaml_merge_keys_may_still_override_what_they_merge(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "resources: &r {cpus: 1, gpus: 0}\nretriever_resources:\n  <<: *r\n  cpus: 0\n"
                            "grid: {model: [tiny_llama]}\n")
    assert load_sweep(path).retriever_resources.as_dict() == {"cpus": 0.0, "gpus": 0.0}


def test_cli_overrides_must_not_touch_axes_or_reserved_keys(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "grid: {model: [tiny_llama]}\n")
    with pytest.raises(SweepError, match="sets model, which is a grid axis"):
        load_sweep(path, ["model=tiny_qwen3"])
    with pytest.raises(SweepError, match="experiment.name is set by the sweep"):
        load_sweep(path, ["experiment.name=x"])
    with pytest.raises(SweepError, match="cannot parse override 'oops'"):
        load_sweep(path, ["oops"])


def test_cli_refuses_bad_sweep_with_exit_2_and_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                               capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, "grid: {model: [tiny_llama], model.temperature: [0.0, -2]}\n")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert sweep_main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.temperature=-2" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert sweep_main(["dataset.limit=3"]) == 2
    assert "give the sweep first" in capsys.readouterr().err
    assert sweep_main([str(tmp_path / "missing.yaml")]) == 2
    assert "sweep file not found" in capsys.readouterr().err
    assert sweep_main([str(path), "--name"]) == 2
    assert "--name needs a value" in capsys.readouterr().err
    assert sweep_main([str(path), "--bogus"]) == 2
    assert sweep_main([str(path), "--dashboard", "--no-dashboard"]) == 2
    assert "--dashboard or --no-dashboard, not both" in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_local_dashboard_only_where_cores_can_spare_it() -> None:
    from slm_ray.sweeps.engine import dashboard_by_default

    assert not dashboard_by_default(1) and not dashboard_by_default(2)
    assert dashboard_by_default(4) and dashboard_by_default(64)


def test_cli_cfg_prints_the_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    path = _sweep(tmp_path, "grid: {model: [tiny_llama, tiny_qwen3]}\n")
    assert sweep_main(["--cfg", str(path), "dataset.limit=3", "--name", "named"]) == 0
    out = capsys.readouterr().out
    assert "sweep named: 2 trials -> outputs/sweeps/named" in out
    assert "slm-ray run" in out and "dataset.limit=3" in out
    assert not (tmp_path / "outputs").exists()


def test_shipped_sweeps_by_name_from_any_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    assert sweep_main(["--list"]) == 0
    listed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in listed] == sorted(SHIPPED)
    assert any(line.startswith("smoke ") and "Offline smoke test" in line for line in listed)
    assert sweep_main(["--cfg", "smoke", "dataset.limit=3"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("sweep smoke: 12 trials -> outputs/sweeps/smoke (from ") and "sweep_files/smoke.yaml)" in out
    assert sweep_main(["--cfg", "smoke.yaml"]) == 0  # a shipped name with its extension
    assert "sweep smoke: 12 trials" in capsys.readouterr().out
    (tmp_path / "smoke.yaml").write_text("grid: {model: [tiny_llama]}\n", encoding="utf-8")
    assert sweep_main(["--cfg", "smoke.yaml"]) == 0  # a file of the user's wins over a shipped name
    assert "sweep smoke: 1 trials" in capsys.readouterr().out
    assert sweep_main(["smoke", "--list"]) == 2
    assert capsys.readouterr().err.strip() == "error: --list takes nothing else (it lists the shipped sweeps)"
    assert sweep_main(["smok"]) == 2
    err = capsys.readouterr().err
    assert "sweep file not found: smok (give a path, or the name of a shipped sweep: family_comparison" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "outputs").exists()


def test_split_flags() -> None:
    assert split_flags(["a.yaml", "--name", "n", "x=1", "--address=auto"]) == (
        {"name": "n", "address": "auto"}, ["a.yaml", "x=1"])
    with pytest.raises(ValueError):
        split_flags(["a.yaml", "--address"])


def test_hydra_value_quoting() -> None:
    assert hydra_value(True) == "true" and hydra_value(None) == "null" and hydra_value(3) == "3"
    assert hydra_value("tiny_llama") == "tiny_llama"
    assert hydra_value("/tmp/a b.jsonl") == "'/tmp/a b.jsonl'"
    assert hydra_value("it's") == "'it\\'s'"
    assert hydra_value(["a", 1]) == "[a,1]"
    cfg = compose_config([f"model.stop={hydra_value(['Q:', '.'])}", f"dataset.path={hydra_value('/tmp/x y.jsonl')}"])
    assert cfg.model.stop == ("Q:", ".") and cfg.dataset.path == "/tmp/x y.jsonl"


def test_plan_json_is_serialisable(tmp_path: Path) -> None:
    path = _sweep(tmp_path, "grid: {model: [tiny_llama], retriever.k: [1, 2], experiment_mode: [retriever_context]}\n")
    data = json.loads(json.dumps(load_sweep(path).to_json()))
    assert [t["k"] for t in data["trials"]] == [2, 1]  # more passages first
    assert data["resources"] == {"cpus": 1.0, "gpus": "auto"}


def test_retriever_comparison_holds_both_hybrids() -> None:
    plan = load_sweep(REPO / "sweeps" / "retriever_comparison.yaml")
    fusions = {(t.config.retriever.name, t.config.retriever.fusion) for t in plan.trials
               if t.uses_retriever and t.config.retriever.type == "hybrid"}
    assert fusions == {("hybrid", "convex"), ("hybrid_rrf", "rrf")}


def test_a_grid_sets_a_setting_the_yaml_leaves_to_its_schema_default(tmp_path: Path) -> None:
    """hybrid.yaml does not list alpha (its default lives in the schema), yet a grid can vary it."""
    path = _sweep(tmp_path, """
name: alphas
overrides: [retriever=hybrid, experiment_mode=retriever_context]
grid:
  model: [tiny_llama]
  retriever.alpha: [0.5, 0.9]
""")
    assert sorted(t.config.retriever.alpha for t in load_sweep(path).trials) == [0.5, 0.9]
    with pytest.raises(SweepError, match="retriever.alpha"):
        load_sweep(_sweep(tmp_path, path.read_text().replace("retriever=hybrid", "retriever=bm25"), "b.yaml"))
