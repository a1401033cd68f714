"""Every shipped config composes and validates; bad input is refused with one line, exit 2, no files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from slm_ray.composition import GROUPS, compose_config, group_options
from slm_ray.config import EXPERIMENT_MODES
from slm_ray.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in group_options(g)])
def test_every_option_of_every_group_composes(group: str, option: str) -> None:
    overrides = [f"{group}={option}"]
    if group in ("dataset", "corpus") and option == "file":
        overrides.append(f"{group}.path=/data/x.jsonl")
    cfg = compose_config(overrides)
    section = getattr(cfg, group)
    identity = section.type if group == "tracker" else section.name
    assert identity == option


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert group_options(group), group


@pytest.mark.parametrize("mode", EXPERIMENT_MODES)
def test_modes_compose_and_name_the_run(mode: str) -> None:
    cfg = compose_config([f"experiment_mode={mode}", "retriever.k=3"])
    assert cfg.run_name.startswith(f"smollm2_135m_gguf_nq_{mode}")
    assert cfg.run_name.endswith("bm25-k3") == (mode == "retriever_context")


def test_defaults_are_the_offline_model_and_qwen3_thinks_not() -> None:
    cfg = compose_config([])
    assert (cfg.model.source, cfg.model.name, cfg.dataset.name) == ("gguf_package", "smollm2_135m_gguf", "nq")
    assert cfg.model.temperature == 0.0
    assert compose_config(["model=qwen3_4b"]).model.chat_template_kwargs == {"enable_thinking": False}


def test_overrides_reach_the_typed_config() -> None:
    cfg = compose_config(["model.temperature=0.7", "model.batch_size=4", "model.load_in_8bit=true",
                          "dataset.limit=200", "experiment.name=my_run", "retriever=dense", "retriever.index_type=hnsw"])
    assert (cfg.model.temperature, cfg.model.batch_size, cfg.model.load_in_8bit) == (0.7, 4, True)
    assert (cfg.dataset.limit, cfg.run_name, cfg.retriever.index_type) == (200, "my_run", "hnsw")


@pytest.mark.parametrize("overrides,message", [
    (["model=nope"], "unknown model option 'nope' (valid: "),
    (["retriever=bm26"], "unknown retriever option 'bm26'"),
    (["model.batchsize=3"], "unknown config key 'model.batchsize'"),
    (["foo=1"], "unknown config key 'foo'"),
    (["model.batch_size=0"], "model.batch_size=0: Input should be greater than or equal to 1"),
    (["model.temperature=-1"], "model.temperature=-1"),
    (["model.top_p=1.5"], "model.top_p=1.5"),
    (["dataset.limit=-5"], "dataset.limit=-5"),
    (["retriever.k=0"], "retriever.k=0"),
    (["experiment_mode=closed_book"], "experiment_mode='closed_book'"),
    (["model.dtype=float8"], "model.dtype='float8'"),
    (["retriever.index_type=annoy", "retriever=dense"], "retriever.index_type='annoy'"),
    (["retriever=dense_ivfpq", "retriever.pq_m=0"], "retriever.pq_m=0: Input should be greater than or equal to 1"),
    (["retriever=dense_ivfpq", "retriever.pq_nbits=17"], "retriever.pq_nbits=17: Input should be less than or equal"),
    (["retriever=dense_ivfpq", "retriever.rerank_factor=0"], "retriever.rerank_factor=0"),
    (["retriever=dense_ivfpq", "retriever.train_size=-1"], "retriever.train_size=-1"),
    (["retriever=dense_ivfpq", "retriever.rerank=3"], "retriever.rerank=3: a number is not a boolean"),
    (["retriever.stemmer=english", "retriever=dense"], "unknown config key 'retriever.stemmer'"),
    (["retriever=hybrid", "retriever.alpha=1.5"], "retriever.alpha=1.5: Input should be less than or equal to 1"),
    (["retriever=hybrid", "retriever.alpha=-0.1"], "retriever.alpha=-0.1: Input should be greater than or equal to 0"),
    (["retriever=hybrid", "retriever.fusion=max"], "retriever.fusion='max': Input should be 'convex' or 'rrf'"),
    (["retriever.fusion=rrf"], "unknown config key 'retriever.fusion'"),  # bm25 has no fusion
    (["retriever=dense", "retriever.alpha=0.5"], "unknown config key 'retriever.alpha'"),
    (["dataset=simpleqa", "experiment_mode=oracle_context"], "needs gold passages"),
    (["experiment.name=../x"], "experiment.name='../x'"),
    (["experiment.name=/abs/path"], "contains a path separator"),
    (["prompt.closed_book='Q: {question} {oops}'"], "unknown placeholder {oops}"),
    (["prompt.with_context='no question here {context}'"], "must contain {question}"),
    (["model.batch_size=abc"], "model.batch_size='abc'"),
    (["model=tiny_llama", "model.load_in_8bit=true"], "would be recorded but not applied"),
    (["model=tiny_qwen3", "model.attn_implementation=flash_attention_2"], "would be recorded but not applied"),
    (["dataset=file"], "missing value for dataset.path"),
    (["model=tiny_llama", "model.architecture=null"], "needs architecture"),
    (["=3"], "bad override in =3"),
    (["model.batch_size"], "cannot parse override 'model.batch_size'"),
])
def test_bad_input_is_one_clear_line(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize("overrides,message", [
    (["dataset.limit=true"], "dataset.limit=true: a boolean is not a number (valid: an integer >= 1, or null)"),
    (["dataset.limit=false"], "dataset.limit=false: a boolean is not a number"),
    (["model.max_new_tokens=true"], "model.max_new_tokens=true: a boolean is not a number (valid: an integer >= 1)"),
    (["model.temperature=true"], "model.temperature=true: a boolean is not a number (valid: a number >= 0.0)"),
    (["retriever.k=true"], "retriever.k=true: a boolean is not a number (valid: an integer >= 1 and <= 100)"),
    (["retriever=hybrid", "retriever.bm25.k1=true"], "retriever.bm25.k1=true: a boolean is not a number"),
    (["retriever=hybrid", "retriever.alpha=true"],
     "retriever.alpha=true: a boolean is not a number (valid: a number >= 0.0 and <= 1.0)"),
    (["experiment.seed=false"], "experiment.seed=false: a boolean is not a number"),
    (["dataset.sample=1"], "dataset.sample=1: a number is not a boolean (valid: true or false)"),
    (["experiment.replace=0"], "experiment.replace=0: a number is not a boolean"),
])
def test_a_boolean_is_not_a_number_nor_a_number_a_boolean(overrides: list[str], message: str) -> None:
    """Issue 19: pydantic read dataset.limit=true as a limit of 1 and dataset.sample=1 as true."""
    with pytest.raises(ConfigError) as info:
        compose_config(overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_numbers_and_booleans_where_they_belong_are_accepted() -> None:
    cfg = compose_config(["dataset.limit=5", "model.temperature=1", "dataset.sample=true", "tracker.offline=true",
                          "dataset.limit=null", "experiment.name=123"])
    assert (cfg.dataset.limit, cfg.model.temperature, cfg.dataset.sample, cfg.tracker.offline) == (None, 1.0, True, True)
    assert cfg.experiment.name == "123"  # a number is a fine name: only a boolean field refuses numbers


def test_cli_refuses_a_boolean_limit_in_one_line(tmp_path: Path) -> None:
    result = _cli("model=tiny_llama", "tracker=none", "dataset.limit=true", cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and "dataset.limit=true" in errors[0], result.stderr
    assert not (tmp_path / "outputs").exists()


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "slm_ray.run", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("args", [["model=nope"], ["model.batch_size=0"], ["dataset=simpleqa", "experiment_mode=oracle_context"],
                                  ["dataset=file", "dataset.path=missing.jsonl", "tracker=none"], ["--frobnicate"]])
def test_cli_refuses_bad_input_with_exit_2_and_writes_nothing(args: list[str], tmp_path: Path) -> None:
    result = _cli(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".cache").exists()


def test_cli_prints_the_composed_config(tmp_path: Path) -> None:
    import yaml

    result = _cli("--cfg", "model=tiny_qwen3", cwd=tmp_path)
    assert result.returncode == 0 and yaml.safe_load(result.stdout)["model"]["name"] == "tiny_qwen3"


def test_import_slm_ray_stays_light() -> None:
    code = ("import sys, slm_ray, slm_ray.config, slm_ray.composition, slm_ray.experiment; "
            "heavy = [m for m in ('torch', 'ray', 'faiss', 'vllm', 'transformers', 'bm25s', 'clearml') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
