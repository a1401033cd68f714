"""GPU check: decode speed, memory and what the optional GPU packages do, on one NVIDIA GPU.

Needs no internet: SmolLM2-135M, SmolLM2-1.7B and Qwen3-0.6B are built at full size with random
weights from the config files in ``bench/architectures/`` (a word-level tokenizer of the model's
vocabulary size stands in for the real one). Sections, each skipped with the reason when a package
or the GPU is missing, and each failing on its own without stopping the others:

* ``env``      the card, its memory bandwidth (table below, or ``--bandwidth-gbs``), versions;
* ``decode``   transformers in bf16, a plain greedy loop that makes exactly ``--new-tokens`` tokens
               per row after a ``--prompt-tokens`` prompt, at batch 1 and 64: tokens/s, peak memory
               (torch ``max_memory_allocated`` and NVML) and the share of the bandwidth ceiling
               (a decode step reads every weight once, and the KV cache);
* ``slm_ray``  slm_ray's own HF backend (``HFGenerator``) on the same models, answers unstopped;
* ``int8``     8-bit loading through slm_ray's sources (``load_in_8bit``, bitsandbytes) of the saved
               random models, then the same decode loop;
* ``faiss``    a flat inner-product index over random vectors, searched on the GPU (faiss GPU build)
               against the CPU;
* ``vllm``     slm_ray's ``VLLMGenerator`` on the saved random SmolLM2-135M folder.

The report goes to ``$OUT`` when set, else ``bench/results/``, as ``gpu_check_<card>.json`` and
``.md``, rewritten after every section (a run cut short keeps what it measured).

    bash scripts/gpu_check.sh                 # on a GPU machine, about 3 to 6 minutes
    bash scripts/gpu_check.sh --dry-run       # the same code with tiny shapes on the CPU, < 1 minute
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import os
import platform
import re
import sys
import tempfile
import time
import traceback
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))
ARCHITECTURES = REPO / "bench" / "architectures"
DEFAULT_MODELS = ("smollm2_135m", "smollm2_1.7b", "qwen3_0.6b")
SECTIONS = ("env", "decode", "slm_ray", "int8", "faiss", "vllm")
#: Peak memory bandwidth (GB/s) by device name, first match wins (``--bandwidth-gbs`` overrides).
BANDWIDTH_GBS: tuple[tuple[str, float, str], ...] = (
    (r"\bH200", 4800, "H200 (HBM3e)"),
    (r"H100.*NVL", 3900, "H100 NVL"),
    (r"H100.*PCIe", 2000, "H100 PCIe"),
    (r"H100", 3350, "H100 SXM (HBM3)"),
    (r"A100.*80GB", 2000, "A100 80GB"),
    (r"A100", 1560, "A100 40GB"),
    (r"A10G", 600, "A10G"),
    (r"\bL4\b", 300, "L4"),
    (r"RTX 4090", 1000, "RTX 4090"),
)
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2, as in SmolLM2-Instruct


class Skip(Exception):
    """A section cannot run here; the message says why."""


# --- models ---------------------------------------------------------------------------------------

def architecture(name: str, tiny: bool = False) -> dict[str, Any]:
    """The model's config.json values from bench/architectures (shrunk to a few thousand weights when tiny)."""
    path = ARCHITECTURES / f"{name}.json"
    if not path.is_file():
        known = sorted(p.stem for p in ARCHITECTURES.glob("*.json"))
        raise SystemExit(f"unknown model {name!r} (valid: {', '.join(known)})")
    cfg = {k: v for k, v in json.loads(path.read_text()).items() if not k.startswith("_")}
    if tiny:
        same_kv = cfg["num_key_value_heads"] == cfg["num_attention_heads"]
        cfg.update(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=4 if same_kv else 2, head_dim=16, vocab_size=2048)
        if "max_window_layers" in cfg:
            cfg["max_window_layers"] = 2
        cfg.update(bos_token_id=1, eos_token_id=2)  # inside the tiny vocabulary
    return cfg


def hf_config(cfg: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    cfg = dict(cfg)
    return AutoConfig.for_model(cfg.pop("model_type"), **{k: v for k, v in cfg.items() if k != "architectures"})


def build_model(name: str, tiny: bool, device: str, dtype: Any, seed: int = 0) -> Any:
    """Random weights of the real class and shape, made directly on ``device`` (fast on a GPU)."""
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(hf_config(architecture(name, tiny)), dtype=dtype)
    return model.eval()


def synthetic_tokenizer(vocab_size: int) -> Any:
    """A word-level tokenizer with one word per id ("w<id>") and the ChatML specials at 0, 1, 2:
    it decodes every id a random model can produce, and "w5 w9" encodes to exactly [5, 9]."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from slm_ray.generation.tiny import CHATML_TEMPLATE

    vocab = {token: i for i, token in enumerate(SPECIAL_TOKENS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIAL_TOKENS), vocab_size)})
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<|endoftext|>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<|endoftext|>", bos_token=None, chat_template=CHATML_TEMPLATE,
                                   additional_special_tokens=["<|im_start|>"])


def save_random_model(name: str, folder: Path, tiny: bool, device: str | None = None) -> Path:
    """A Hugging Face folder (bf16 safetensors + synthetic tokenizer) of the random model."""
    import torch

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(name, tiny, device, torch.bfloat16)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    synthetic_tokenizer(model.config.vocab_size).save_pretrained(folder)
    del model
    free_memory()
    return folder


def weight_bytes_read(model: Any) -> int:
    """Bytes of weights one decode step reads: all of them, less the input embedding table when it
    is not also the output layer (only one row of it is read per token)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    if not model.config.tie_word_embeddings:
        embedding = model.get_input_embeddings().weight
        total -= embedding.numel() * embedding.element_size()
    return total


def kv_bytes_per_token(cfg: dict[str, Any], bytes_per_value: int = 2) -> int:
    """KV cache per token: 2 (K and V) x layers x kv heads x head dim x bytes."""
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    return 2 * cfg["num_hidden_layers"] * cfg["num_key_value_heads"] * head_dim * bytes_per_value


# --- measuring ------------------------------------------------------------------------------------

def sync(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.synchronize()


def free_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


def reset_peak(device: str) -> None:
    if device == "cuda":
        import torch

        torch.cuda.reset_peak_memory_stats()


def memory_now(device: str) -> dict[str, float | None]:
    """Peak torch allocation since the last reset, and NVML: this process, and the whole device."""
    from slm_ray.evaluation.memory import gpu_memory_by_process

    out: dict[str, float | None] = dict.fromkeys(("torch_peak_allocated_mb", "nvml_process_mb", "nvml_device_used_mb"))
    if device != "cuda":
        return out
    import torch

    out["torch_peak_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    process_mb, _ = gpu_memory_by_process()
    out["nvml_process_mb"] = None if process_mb is None else round(process_mb, 1)
    out["nvml_device_used_mb"] = nvml_device_used_mb()
    return out


def nvml_device_used_mb(index: int = 0) -> float | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        info = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
        return round(info.used / 2**20, 1)
    except Exception:  # noqa: BLE001 - NVML is optional here
        return None


def greedy_decode(model: Any, batch: int, prompt_tokens: int, new_tokens: int, device: str) -> dict[str, float]:
    """Exactly ``new_tokens`` greedy tokens per row after random prompts (no EOS check): the first
    from the prefill, the rest one decode step each, timed apart."""
    import inspect

    import torch

    cache_kwarg = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(len(SPECIAL_TOKENS), model.config.vocab_size, (batch, prompt_tokens), generator=generator)
    ids = ids.to(device)
    with torch.inference_mode():
        sync(device)
        started = time.perf_counter()
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
        cache = getattr(out, cache_kwarg, None) or out.past_key_values
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        prefilled = time.perf_counter()
        for _ in range(new_tokens - 1):
            out = model(input_ids=token, use_cache=True, logits_to_keep=1, **{cache_kwarg: cache})
            cache = getattr(out, cache_kwarg, None) or out.past_key_values
            token = out.logits[:, -1].argmax(-1, keepdim=True)
        sync(device)
        done = time.perf_counter()
    decode_s = done - prefilled
    return {"prefill_ms": round((prefilled - started) * 1000, 2),
            "decode_tokens_per_s": round(batch * (new_tokens - 1) / decode_s, 1) if new_tokens > 1 else None,
            "tokens_per_s": round(batch * new_tokens / (done - started), 1),
            "ms_per_step": round(decode_s * 1000 / max(new_tokens - 1, 1), 3)}


def ceiling(weight_bytes: int, kv_per_token: int, batch: int, context: int,
            bandwidth_gbs: float | None) -> float | None:
    """Decode tokens/s if every step only had to read the weights and this batch's KV cache at full
    memory bandwidth: batch x bandwidth / (weight bytes + KV bytes)."""
    if not bandwidth_gbs:
        return None
    return batch * bandwidth_gbs * 1e9 / (weight_bytes + batch * context * kv_per_token)


def measure_model(model: Any, cfg: dict[str, Any], args: argparse.Namespace, bandwidth: float | None,
                  kv_bytes: int = 2) -> dict[str, Any]:
    """The decode loop at each batch size, with memory and the bandwidth ceiling."""
    weights = weight_bytes_read(model)
    result: dict[str, Any] = {"parameters": sum(p.numel() for p in model.parameters()),
                              "weight_mb_read_per_step": round(weights / 2**20, 1), "batches": {}}
    greedy_decode(model, 1, 8, 3, args.device)  # warm-up: kernels, allocator
    context = args.prompt_tokens + args.new_tokens // 2
    for batch in args.batches:
        free_memory()
        reset_peak(args.device)
        run = greedy_decode(model, batch, args.prompt_tokens, args.new_tokens, args.device)
        top = ceiling(weights, kv_per_token=kv_bytes_per_token(cfg, kv_bytes), batch=batch, context=context,
                      bandwidth_gbs=bandwidth)
        run["ceiling_tokens_per_s"] = None if top is None else round(top, 1)
        run["share_of_ceiling"] = (None if top is None or run["decode_tokens_per_s"] is None
                                   else round(run["decode_tokens_per_s"] / top, 3))
        run.update(memory_now(args.device))
        result["batches"][str(batch)] = run
        log(f"    batch {batch:>3}: {run['decode_tokens_per_s']} tok/s decode, {run['tokens_per_s']} tok/s overall"
            + (f", {run['share_of_ceiling']:.0%} of the bandwidth ceiling" if run["share_of_ceiling"] else ""))
    return result


# --- sections -------------------------------------------------------------------------------------

def log(message: str) -> None:
    print(message, flush=True)


def package_versions() -> dict[str, str]:
    found = {}
    for name in ("slm-ray", "torch", "transformers", "accelerate", "vllm", "bitsandbytes", "faiss-cpu", "faiss-gpu",
                 "faiss-gpu-cu12", "nvidia-ml-py", "flash-attn"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found


def bandwidth_for(card: str) -> tuple[float | None, str | None]:
    """(GB/s, which entry) from the table for a device name, or (None, None)."""
    for pattern, gbs, label in BANDWIDTH_GBS:
        if re.search(pattern, card):
            return gbs, label
    return None, None


def section_env(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(),
                            "packages": package_versions(), "torch_cuda": torch.version.cuda,
                            "device": args.device, "tiny": args.tiny}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(0), capability=f"{props.major}.{props.minor}",
                    memory_gb=round(props.total_memory / 1e9, 1), multiprocessors=props.multi_processor_count)
        try:
            import pynvml

            pynvml.nvmlInit()
            info["driver"] = pynvml.nvmlSystemGetDriverVersion()
            info["nvml_name"] = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(0))
        except Exception as exc:  # noqa: BLE001
            info["nvml"] = f"unavailable: {exc}"
    else:
        info["card"] = "cpu"
    bandwidth, source = args.bandwidth_gbs, "--bandwidth-gbs"
    if bandwidth is None and args.device == "cuda":
        bandwidth, label = bandwidth_for(info["card"])
        source = f"table: {label}" if bandwidth else "unknown card: pass --bandwidth-gbs for the ceiling"
    if args.device != "cuda" and bandwidth is None:
        source = "cpu: no ceiling"
    info["bandwidth_gbs"], info["bandwidth_source"] = bandwidth, source
    state["bandwidth"] = bandwidth
    state["card"] = info["card"]
    return info


def section_decode(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    import torch

    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    out: dict[str, Any] = {"dtype": str(dtype).removeprefix("torch."), "prompt_tokens": args.prompt_tokens,
                           "new_tokens": args.new_tokens, "models": {}}
    for name in args.models:
        if over_budget(args):
            out["models"][name] = "skipped: time budget spent"
            continue
        log(f"  {name}")
        model = build_model(name, args.tiny, args.device, dtype)
        try:
            out["models"][name] = measure_model(model, architecture(name, args.tiny), args, state["bandwidth"],
                                                kv_bytes=2 if args.device == "cuda" else 4)
        finally:
            del model
            free_memory()
    return out


def saved_model(name: str, args: argparse.Namespace, state: dict[str, Any]) -> Path:
    """The random model saved once per run (for the sections that load from a folder)."""
    folders = state.setdefault("folders", {})
    if name not in folders:
        folders[name] = save_random_model(name, Path(state["workdir"]) / name, args.tiny, args.device)
    return folders[name]


def model_config(name: str, folder: Path, args: argparse.Namespace, *overrides: str) -> Any:
    from slm_ray.composition import compose_config

    option = name if (REPO / "conf" / "model" / f"{name}.yaml").is_file() else "smollm2_135m"
    return compose_config([f"model={option}", "model.source=local", f"model.path={folder}", "model.stop=[]",
                           f"model.device={args.device}", f"model.max_new_tokens={args.new_tokens}",
                           f"experiment.cache_dir={Path(tempfile.gettempdir()) / 'slm_ray_gpu_check_cache'}",
                           *overrides])


def synthetic_prompts(tokenizer: Any, count: int, prompt_tokens: int, render: Callable[[list], str]) -> list[str]:
    """``count`` chat prompts of about ``prompt_tokens`` tokens of random words."""
    import random

    rng = random.Random(0)
    size = len(tokenizer)
    return [render([{"role": "user", "content": " ".join(f"w{rng.randrange(len(SPECIAL_TOKENS), size)}"
                                                          for _ in range(max(prompt_tokens - 6, 1)))}])
            for _ in range(count)]


def run_generator(generator: Any, args: argparse.Namespace) -> dict[str, Any]:
    """Answers at each batch size (as many prompts as the batch): tokens/s of the generated tokens."""
    runs: dict[str, Any] = {}
    warm = synthetic_prompts(generator.tokenizer, 1, 16, generator.render)
    list(generator.generate_batches(warm))
    for batch in args.batches:
        prompts = synthetic_prompts(generator.tokenizer, batch, args.prompt_tokens, generator.render)
        free_memory()
        reset_peak(args.device)
        started = time.perf_counter()
        generations = [g for _, gens in generator.generate_batches(prompts) for g in gens]
        seconds = time.perf_counter() - started
        generated = sum(g.generated_tokens for g in generations)
        runs[str(batch)] = {"seconds": round(seconds, 3), "generated_tokens": generated,
                            "of_requested": batch * args.new_tokens, "tokens_per_s": round(generated / seconds, 1),
                            **memory_now(args.device)}
        log(f"    batch {batch:>3}: {runs[str(batch)]['tokens_per_s']} tok/s ({generated} tokens)")
    return runs


def section_slm_ray(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    from slm_ray.experiment import build_generator

    out: dict[str, Any] = {"models": {}}
    for name in args.models:
        if over_budget(args):
            out["models"][name] = "skipped: time budget spent"
            continue
        log(f"  {name}")
        folder = saved_model(name, args, state)
        biggest = max(args.batches)
        generator = build_generator(model_config(name, folder, args, f"model.batch_size={biggest}"))
        try:
            out["models"][name] = {"load_seconds": round(generator.load_seconds, 2),
                                   "attn_implementation": generator.describe().get("attn_implementation"),
                                   "batches": run_generator(generator, args)}
        finally:
            generator.close()
            del generator
            free_memory()
    return out


def section_int8(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    if importlib.util.find_spec("bitsandbytes") is None:
        raise Skip("bitsandbytes is not installed (pip install 'slm-ray[gpu]')")
    from slm_ray.generation.sources import load_tokenizer_and_model

    out: dict[str, Any] = {"models": {}}
    for name in args.models:
        if over_budget(args):
            out["models"][name] = "skipped: time budget spent"
            continue
        log(f"  {name}")
        folder = saved_model(name, args, state)
        cfg = model_config(name, folder, args, "model.load_in_8bit=true")
        free_memory()
        reset_peak(args.device)
        started = time.perf_counter()
        _, model, _ = load_tokenizer_and_model(cfg.model, cfg.experiment.cache_dir)
        load_seconds = time.perf_counter() - started
        try:
            int8_layers = sum(type(m).__name__ == "Linear8bitLt" for m in model.modules())
            result = measure_model(model, architecture(name, args.tiny), args, state["bandwidth"],
                                   kv_bytes=2 if args.device == "cuda" else 4)
            out["models"][name] = {"load_seconds": round(load_seconds, 2), "int8_linear_layers": int8_layers,
                                   "footprint_mb": round(model.get_memory_footprint() / 2**20, 1), **result}
        finally:
            del model
            free_memory()
    return out


def section_faiss(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    if importlib.util.find_spec("faiss") is None:
        raise Skip("faiss is not installed")
    import faiss
    import numpy as np

    from slm_ray.retrieval.dense import faiss_has_gpu

    dists = {d: v for d, v in package_versions().items() if d.startswith("faiss")}
    out: dict[str, Any] = {"faiss_version": getattr(faiss, "__version__", None), "distributions": dists,
                           "gpu_build": hasattr(faiss, "StandardGpuResources")}
    if len(dists) > 1:
        out["warning"] = ("several faiss distributions share the faiss/ folder; keep one (see docs/GPU.md)")
    n, dim, queries, k = (20_000, 64, 64, 10) if args.tiny else (1_000_000, 384, 1_000, 10)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, dim), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    noise = 0.01 * rng.standard_normal((queries, dim), dtype=np.float32)
    query = vectors[rng.choice(n, queries, replace=False)] + noise
    out.update(vectors=n, dim=dim, queries=queries, k=k)
    cpu = faiss.IndexFlatIP(dim)
    cpu.add(vectors)
    started = time.perf_counter()
    _, cpu_ids = cpu.search(query, k)
    out["cpu_search_s"] = round(time.perf_counter() - started, 4)
    if not faiss_has_gpu(faiss):
        why = "faiss has no GPU support (a faiss-cpu build)" if not out["gpu_build"] else "no GPU visible to faiss"
        out["gpu"] = f"skipped: {why}"
        return out
    resources = faiss.StandardGpuResources()
    started = time.perf_counter()
    gpu = faiss.index_cpu_to_gpu(resources, 0, cpu)
    out["gpu_copy_s"] = round(time.perf_counter() - started, 4)
    gpu.search(query[:8], k)  # warm-up
    started = time.perf_counter()
    _, gpu_ids = gpu.search(query, k)
    out["gpu_search_s"] = round(time.perf_counter() - started, 4)
    out["gpu_speedup"] = round(out["cpu_search_s"] / max(out["gpu_search_s"], 1e-9), 1)
    out["top1_agreement"] = float((gpu_ids[:, 0] == cpu_ids[:, 0]).mean())
    log(f"  flat search of {queries} queries over {n} x {dim}: CPU {out['cpu_search_s']}s, GPU {out['gpu_search_s']}s")
    del gpu, resources
    return out


def section_vllm(args: argparse.Namespace, state: dict[str, Any]) -> dict[str, Any]:
    if importlib.util.find_spec("vllm") is None:
        raise Skip("vllm is not installed (pip install 'slm-ray[gpu]')")
    if args.device != "cuda":
        raise Skip("vLLM needs a CUDA GPU (this run is on the CPU)")
    from slm_ray.generation.vllm import VLLMGenerator

    out: dict[str, Any] = {"models": {}}
    for name in args.vllm_models:
        if over_budget(args):
            out["models"][name] = "skipped: time budget spent"
            continue
        log(f"  {name}")
        folder = saved_model(name, args, state)
        free_memory()
        before = nvml_device_used_mb()
        biggest = max(args.batches)
        cfg = model_config(name, folder, args, "model.backend=vllm", "model.device=auto",
                           "model.max_prompt_tokens=1024", "model.max_model_len=2048", f"model.batch_size={biggest}",
                           f"model.gpu_memory_utilization={args.vllm_gpu_memory_utilization}")
        generator = VLLMGenerator(cfg.model)
        try:
            runs = run_generator(generator, args)
            out["models"][name] = {"load_seconds": round(generator.load_seconds, 2), "batches": runs,
                                   "device_used_mb_before": before, "device_used_mb_loaded": nvml_device_used_mb(),
                                   "describe": generator.describe()}
        finally:
            generator.close()
            del generator
            free_memory()
        out["models"][name]["device_used_mb_after_close"] = nvml_device_used_mb()
    return out


SECTION_FUNCTIONS: dict[str, Callable[[argparse.Namespace, dict[str, Any]], dict[str, Any]]] = {
    "env": section_env, "decode": section_decode, "slm_ray": section_slm_ray, "int8": section_int8,
    "faiss": section_faiss, "vllm": section_vllm,
}


# --- report ---------------------------------------------------------------------------------------

def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower() or "unknown"


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(report: dict[str, Any]) -> str:
    env = report["sections"].get("env", {})
    lines = [f"# GPU check: {report['card']}", "",
             f"{report['started']} · {report['mode']} · prompt {report['prompt_tokens']} tokens, "
             f"{report['new_tokens']} new tokens per row · {report['seconds']} s", ""]
    if isinstance(env, dict):
        packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items())
        lines += [f"- card: {env.get('card')} (capability {env.get('capability', '-')}, "
                  f"{env.get('memory_gb', '-')} GB, driver {env.get('driver', '-')})",
                  f"- bandwidth: {_fmt(env.get('bandwidth_gbs'))} GB/s ({env.get('bandwidth_source')})",
                  f"- packages: {packages}", ""]
    for title, key in (("transformers decode loop", "decode"), ("int8 (bitsandbytes, slm_ray sources)", "int8")):
        section = report["sections"].get(key)
        lines += [f"## {title}", ""]
        if not isinstance(section, dict):
            lines += [f"{section or 'not run (yet)'}", ""]
            continue
        lines += ["| model | params | weights read/step MB | batch | prefill ms | decode tok/s | overall tok/s "
                  "| ceiling tok/s | of ceiling | torch peak MB | NVML process MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for name, result in section.get("models", {}).items():
            if not isinstance(result, dict):
                lines.append(f"| {name} | {result} |||||||||")
                continue
            for batch, run in result["batches"].items():
                share = run.get("share_of_ceiling")
                lines.append(f"| {name} | {_fmt(result['parameters'])} | {_fmt(result['weight_mb_read_per_step'])} "
                             f"| {batch} | {_fmt(run['prefill_ms'])} | {_fmt(run['decode_tokens_per_s'])} "
                             f"| {_fmt(run['tokens_per_s'])} | {_fmt(run['ceiling_tokens_per_s'])} "
                             f"| {'-' if share is None else f'{share:.0%}'} | {_fmt(run['torch_peak_allocated_mb'])} "
                             f"| {_fmt(run['nvml_process_mb'])} |")
        lines.append("")
    for title, key in (("slm_ray HFGenerator (unstopped answers)", "slm_ray"), ("vLLM (VLLMGenerator)", "vllm")):
        section = report["sections"].get(key)
        lines += [f"## {title}", ""]
        if not isinstance(section, dict):
            lines += [f"{section or 'not run (yet)'}", ""]
            continue
        lines += ["| model | load s | batch | tok/s | tokens made / asked | torch peak MB | NVML device used MB |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for name, result in section.get("models", {}).items():
            if not isinstance(result, dict):
                lines.append(f"| {name} | {result} ||||||")
                continue
            for batch, run in result["batches"].items():
                lines.append(f"| {name} | {_fmt(result['load_seconds'])} | {batch} | {_fmt(run['tokens_per_s'])} "
                             f"| {run['generated_tokens']} / {run['of_requested']} "
                             f"| {_fmt(run['torch_peak_allocated_mb'])} | {_fmt(run['nvml_device_used_mb'])} |")
        lines.append("")
    faiss_section = report["sections"].get("faiss")
    lines += ["## faiss", ""]
    if isinstance(faiss_section, dict):
        lines += [f"- {k}: {v}" for k, v in faiss_section.items()] + [""]
    else:
        lines += [f"{faiss_section or 'not run (yet)'}", ""]
    lines += ["Ceiling: decode tokens/s if each step only read every weight once plus the batch's KV cache at "
              "the card's peak bandwidth (batch x bandwidth / bytes). Random weights: answers are noise, "
              "speed and memory are those of the real shapes.", ""]
    return "\n".join(lines)


def write_report(report: dict[str, Any], out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"gpu_check_{slug(report['card'])}{'_dry-run' if report['mode'] != 'gpu' else ''}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    return stem.with_suffix(".md")


# --- main -----------------------------------------------------------------------------------------

def over_budget(args: argparse.Namespace) -> bool:
    return time.monotonic() - args.started > args.time_budget


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny shapes of the same architectures")
    parser.add_argument("--dry-run", action="store_true", help="--device cpu --tiny: the same code on a CPU")
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="bench/architectures names")
    parser.add_argument("--vllm-models", nargs="+", default=["smollm2_135m"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 64], help="default 1 64 (tiny: 1 8)")
    parser.add_argument("--prompt-tokens", type=int, default=None, help="default 128 (tiny: 16)")
    parser.add_argument("--new-tokens", type=int, default=None, help="tokens made per row (default 64, tiny: 6)")
    parser.add_argument("--bandwidth-gbs", type=float, default=None, help="the card's memory bandwidth, GB/s")
    parser.add_argument("--vllm-gpu-memory-utilization", type=float, default=0.5)
    parser.add_argument("--skip", nargs="+", choices=SECTIONS, default=[], help="sections to leave out")
    parser.add_argument("--time-budget", type=float, default=420.0, help="seconds; later models are skipped after it")
    parser.add_argument("--out", type=Path, default=None, help="report folder (default $OUT, else bench/results)")
    args = parser.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny = "cpu", True
    if args.tiny and args.batches == [1, 64]:
        args.batches = [1, 8]  # tiny shapes are a check of the code, not of speed
    args.prompt_tokens = args.prompt_tokens or (16 if args.tiny else 128)
    args.new_tokens = args.new_tokens or (6 if args.tiny else 64)
    args.out = args.out or Path(os.environ.get("OUT") or REPO / "bench" / "results")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.started = time.monotonic()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every model is built here
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    import logging

    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # a cast warning on every CPU int8 matmul
    import torch
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()

    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA GPU visible: run with --dry-run (or --device cpu) on a machine without one", file=sys.stderr)
        return 2
    mode = "gpu" if args.device == "cuda" and not args.tiny else ("dry-run" if args.device == "cpu" else "gpu-tiny")
    report: dict[str, Any] = {"card": "cpu" if args.device == "cpu" else torch.cuda.get_device_name(0), "mode": mode,
                              "started": time.strftime("%Y-%m-%d %H:%M:%S"), "models": args.models,
                              "batches": args.batches, "prompt_tokens": args.prompt_tokens,
                              "new_tokens": args.new_tokens, "seconds": 0.0, "sections": {}}
    state: dict[str, Any] = {"bandwidth": args.bandwidth_gbs}
    path = None
    with tempfile.TemporaryDirectory(prefix="slm_ray_gpu_check_") as workdir:
        state["workdir"] = workdir
        for name in SECTIONS:
            if name in args.skip:
                report["sections"][name] = "skipped: --skip"
                continue
            log(f"[{name}]")
            started = time.perf_counter()
            try:
                report["sections"][name] = SECTION_FUNCTIONS[name](args, state)
            except Skip as exc:
                report["sections"][name] = f"skipped: {exc}"
            except Exception as exc:  # noqa: BLE001 - one failing section must not stop the others
                traceback.print_exc()
                report["sections"][name] = f"failed: {type(exc).__name__}: {exc}"
            free_memory()
            if isinstance(report["sections"][name], str):
                log(f"  {report['sections'][name]}")
            log(f"  ({time.perf_counter() - started:.1f}s)")
            report["seconds"] = round(time.monotonic() - args.started, 1)
            path = write_report(report, args.out)
    log(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
