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

vLLM is imported only when a generator is built, so ``import slm_ray`` stays light.
"""

from __future__ import annotations

import gc
import importlib.util
import logging
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from slm_ray.errors import ConfigError
from slm_ray.generation.base import BaseModel, Generation, cut_at_stop
from slm_ray.generation.dtypes import choose_dtype
from slm_ray.logs import STEP

log = logging.getLogger("slm_ray.generation")

#: Prompts handed to ``LLM.generate`` at once (or ``model.batch_size`` if larger). vLLM schedules
#: them itself; a chunk's answers are yielded, and so saved, when the whole chunk is done.
CHUNK_SIZE = 256
#: Where vLLM can load a model from: a hub id or a folder in Hugging Face format.
VALID_SOURCES = ("hub", "local")
INSTALL_HINT = "pip install 'slm-ray[gpu]'"
NOT_INSTALLED = f"model.backend=vllm needs vllm, which is not installed ({INSTALL_HINT})"


def check_config(cfg: Any) -> None:
    """Refuse, before anything is loaded, settings that vLLM cannot honour as the HF backend does."""
    if cfg.source not in VALID_SOURCES:
        raise ConfigError(
            f"model.source={cfg.source!r} is not supported with model.backend=vllm (valid: "
            f"{', '.join(VALID_SOURCES)}); gguf_package and tiny models run with model.backend=hf"
        )
    if cfg.load_in_8bit:
        # vLLM quantizes with bitsandbytes in flight to 4-bit only (8-bit needs a pre-quantized
        # checkpoint), and its fp8 is another scheme: neither would compare with the HF int8 runs.
        raise ConfigError(
            "model.load_in_8bit=true is not supported with model.backend=vllm (valid: false); "
            "bitsandbytes int8 runs with model.backend=hf"
        )
    if cfg.device == "cpu":
        raise ConfigError("model.device='cpu' is not supported with model.backend=vllm (valid: auto, cuda); "
                          "CPU runs use model.backend=hf")
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


def resolve_location(cfg: Any) -> str:
    """What vLLM loads: the hub id, or the absolute path of a local folder."""
    if cfg.source == "local":
        folder = Path(cfg.path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"model.path={cfg.path!r}: folder not found")
        return str(folder.resolve())
    return cfg.path


def engine_kwargs(cfg: Any, location: str) -> dict[str, Any]:
    """Arguments of ``vllm.LLM``. ``enforce_eager`` is left to vLLM (CUDA graphs on)."""
    tp = tensor_parallel_size(cfg)
    return {
        "model": location,
        "tokenizer": location,
        "dtype": choose_dtype(cfg.dtype, "cuda")[0],  # auto: bf16 on compute capability 8.0+, as the HF backend
        "seed": cfg.seed,
        "gpu_memory_utilization": cfg.gpu_memory_utilization,
        "max_model_len": cfg.max_model_len,
        "tensor_parallel_size": tp,
        # Never Ray. Left unset, vLLM picks its Ray executor when it runs inside a Ray placement group
        # with more than one GPU, and that executor asks Ray for a placement group of its own, inside
        # the one the trial already holds: the GPUs are taken, so it waits for ever. "uni" runs the
        # model in vLLM's engine process (what vLLM picks for one GPU anyway), "mp" starts one worker
        # process per GPU of this trial; neither creates placement groups.
        "distributed_executor_backend": "uni" if tp == 1 else "mp",
        # Decoding defaults come from here, never from the model's generation_config.json.
        "generation_config": "vllm",
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


def vllm_installed() -> bool:
    """Whether ``import vllm`` would find a module, found without importing it (that takes seconds)."""
    try:
        return importlib.util.find_spec("vllm") is not None
    except ValueError:  # in sys.modules without a spec: imported some other way, so it is there
        return True


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
            "(in a sweep, give the model num_gpus > 0); CPU runs use model.backend=hf"
        )


class VLLMGenerator(BaseModel):
    """A causal LM served by vLLM's offline ``LLM`` engine on one GPU (or ``num_gpus`` of them)."""

    def __init__(self, config: Any, cache_dir: str | Path = ".cache"):
        # cache_dir holds the HF backend's tiny tokenizer and GGUF copies, neither used here; weights
        # come from the Hugging Face cache, as with the HF backend.
        super().__init__(config)
        check_config(config)
        location = resolve_location(config)
        vllm = import_vllm()
        check_visible_gpus(config)
        self.vllm_version = getattr(vllm, "__version__", None)
        self.engine_kwargs = engine_kwargs(config, location)
        started = time.perf_counter()
        self.llm: Any = vllm.LLM(**self.engine_kwargs)
        self.load_seconds = time.perf_counter() - started
        self.tokenizer = self.llm.get_tokenizer()
        self.eos_ids = {i for i in {self.tokenizer.eos_token_id, *generation_eos_ids(location)} if i is not None}
        self.sampling_params = vllm.SamplingParams(**sampling_kwargs(config, self.eos_ids))
        log.info("loaded %s with vLLM %s in %.1fs", config.name, self.vllm_version, self.load_seconds,
                 extra=STEP)

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
        return {**super().describe(), "device": "cuda", "dtype": kwargs["dtype"], "source": self.config.source,
                "path": self.config.path, "load_in_8bit": False, "vllm_version": self.vllm_version,
                "gpu_memory_utilization": kwargs["gpu_memory_utilization"],
                "max_model_len": self._engine_max_model_len(), "tensor_parallel_size": kwargs["tensor_parallel_size"],
                "distributed_executor_backend": kwargs["distributed_executor_backend"],
                "attn_implementation": "vllm"}

    def _engine_max_model_len(self) -> int | None:
        """The context length vLLM settled on (the model's own when max_model_len is null)."""
        try:
            return int(self.llm.llm_engine.model_config.max_model_len)
        except (AttributeError, TypeError, ValueError):
            return self.engine_kwargs["max_model_len"]

    def close(self) -> None:
        """Stop the engine (its process and GPU memory) now rather than whenever it is collected."""
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
        import torch

        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
