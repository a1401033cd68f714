"""FAKE ``vllm`` for tests: not vLLM, no GPU code. See tests/fakes/README.md.

``FakeLLM`` and ``FakeSamplingParams`` record exactly what they are given, refuse arguments vLLM
0.33 does not take, and answer like vLLM's offline engine: tokens come from ``FakeLLM.script`` when
a test sets it (``script(prompt_token_ids) -> list of token ids``), else greedily from a
transformers model loaded from the ``model`` folder; generation stops at ``max_tokens``, at an EOS
or ``stop_token_ids`` id (kept in ``token_ids``), or at a stop string (cut from ``text``; the token
that completed it stays in ``token_ids``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

__version__ = "0.33.0+fake"
IS_FAKE = True

#: Keyword arguments of vllm.LLM / EngineArgs that slm_ray may use (a subset of vLLM 0.33's).
LLM_ARGS = {
    "model", "tokenizer", "tokenizer_mode", "skip_tokenizer_init", "trust_remote_code", "tensor_parallel_size",
    "pipeline_parallel_size", "dtype", "quantization", "revision", "tokenizer_revision", "seed",
    "gpu_memory_utilization", "swap_space", "cpu_offload_gb", "enforce_eager", "max_model_len",
    "distributed_executor_backend", "generation_config", "override_generation_config", "max_num_seqs",
    "max_num_batched_tokens", "enable_prefix_caching", "download_dir", "load_format", "hf_token", "hf_overrides",
    "compilation_config", "disable_log_stats", "kv_cache_dtype", "enable_chunked_prefill", "kv_cache_memory_bytes",
}
MODEL_DTYPES = {"auto", "half", "float16", "bfloat16", "float", "float32"}
EXECUTOR_BACKENDS = {"ray", "mp", "uni", "external_launcher"}
#: Fields of vllm.SamplingParams (vLLM 0.33) that slm_ray may set.
SAMPLING_FIELDS = {
    "n", "presence_penalty", "frequency_penalty", "repetition_penalty", "temperature", "top_p", "top_k", "min_p",
    "seed", "stop", "stop_token_ids", "ignore_eos", "max_tokens", "min_tokens", "logprobs", "prompt_logprobs",
    "detokenize", "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output",
    "bad_words", "logit_bias", "allowed_token_ids",
}


class FakeSamplingParams:
    """Records its keyword arguments; defaults and checks as vLLM's SamplingParams."""

    instances: ClassVar[list["FakeSamplingParams"]] = []

    def __init__(self, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - SAMPLING_FIELDS)
        if unknown:
            raise TypeError(f"SamplingParams got unexpected keyword argument(s) {unknown}")
        if any(not s for s in kwargs.get("stop") or []):
            raise ValueError("stop cannot contain an empty string.")
        if not 0.0 < kwargs.get("top_p", 1.0) <= 1.0:
            raise ValueError("top_p must be in (0, 1]")
        self.kwargs = dict(kwargs)
        self.temperature = kwargs.get("temperature", 1.0)
        self.max_tokens = kwargs.get("max_tokens", 16)
        self.stop = list(kwargs.get("stop") or [])
        self.stop_token_ids = list(kwargs.get("stop_token_ids") or [])
        self.ignore_eos = kwargs.get("ignore_eos", False)
        self.skip_special_tokens = kwargs.get("skip_special_tokens", True)
        FakeSamplingParams.instances.append(self)


@dataclass
class FakeCompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str
    stop_reason: int | str | None = None


@dataclass
class FakeRequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[FakeCompletionOutput] = field(default_factory=list)
    finished: bool = True


class FakeLLM:
    """Records its constructor arguments and every generate call; answers as described above."""

    instances: ClassVar[list["FakeLLM"]] = []
    script: ClassVar[Callable[[list[int]], list[int]] | None] = None

    def __init__(self, model: str, **kwargs: Any) -> None:
        unknown = sorted(set(kwargs) - LLM_ARGS)
        if unknown:
            raise TypeError(f"LLM got unexpected keyword argument(s) {unknown}")
        if kwargs.get("dtype", "auto") not in MODEL_DTYPES:
            raise ValueError(f"unknown dtype {kwargs['dtype']!r}")
        backend = kwargs.get("distributed_executor_backend")
        if backend is not None and backend not in EXECUTOR_BACKENDS:
            raise ValueError(f"unknown distributed_executor_backend {backend!r}")
        if not 0.0 < kwargs.get("gpu_memory_utilization", 0.9) <= 1.0:
            raise ValueError("gpu_memory_utilization must be in (0, 1]")
        self.kwargs = {"model": model, **kwargs}
        self.calls: list[dict[str, Any]] = []
        self.shut_down = False
        self._model: Any = None
        self._requests = 0
        from transformers import AutoTokenizer

        self._tokenizer = AutoTokenizer.from_pretrained(kwargs.get("tokenizer") or model)
        FakeLLM.instances.append(self)

    def get_tokenizer(self) -> Any:
        return self._tokenizer

    def generate(self, prompts: Any, sampling_params: FakeSamplingParams | None = None, /, *,
                 use_tqdm: bool = True, **kwargs: Any) -> list[FakeRequestOutput]:
        if self.shut_down:
            raise RuntimeError("engine is shut down")
        params = sampling_params or FakeSamplingParams()
        batch = prompts if isinstance(prompts, list) else [prompts]
        self.calls.append({"prompts": batch, "sampling_params": params, "use_tqdm": use_tqdm, **kwargs})
        outputs = []
        for prompt in batch:
            if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
                ids, text = list(prompt["prompt_token_ids"]), None
            else:  # a text prompt: vLLM tokenizes it with special tokens
                text = prompt if isinstance(prompt, str) else prompt["prompt"]
                ids = self._tokenizer(text)["input_ids"]
            outputs.append(FakeRequestOutput(str(self._requests), text, ids, [self._complete(ids, params)]))
            self._requests += 1
        return outputs

    def _complete(self, prompt_ids: list[int], params: FakeSamplingParams) -> FakeCompletionOutput:
        stops = set(params.stop_token_ids)
        if not params.ignore_eos and self._tokenizer.eos_token_id is not None:
            stops.add(self._tokenizer.eos_token_id)
        scripted = FakeLLM.script(prompt_ids) if FakeLLM.script is not None else None
        tokens: list[int] = []
        for step in range(params.max_tokens):
            if scripted is not None and step >= len(scripted):
                break  # the script ends: as if max_tokens were reached
            token = scripted[step] if scripted is not None else self._greedy(prompt_ids + tokens)
            tokens.append(token)
            if token in stops:
                return self._output(tokens, "stop", None if token == self._tokenizer.eos_token_id else token, params)
            text = self._tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
            hit = [s for s in params.stop if s in text]
            if hit:
                first = min(hit, key=text.find)
                return FakeCompletionOutput(0, text[:text.find(first)], tokens, "stop", first)
        return self._output(tokens, "length", None, params)

    def _output(self, tokens: list[int], reason: str, stop_reason: Any, params: FakeSamplingParams):
        text = self._tokenizer.decode(tokens, skip_special_tokens=params.skip_special_tokens)
        return FakeCompletionOutput(0, text, tokens, reason, stop_reason)

    def _greedy(self, ids: list[int]) -> int:
        import torch
        from transformers import AutoModelForCausalLM

        if self._model is None:
            self._model = AutoModelForCausalLM.from_pretrained(self.kwargs["model"], dtype=torch.float32).eval()
        with torch.inference_mode():
            return int(self._model(input_ids=torch.tensor([ids])).logits[0, -1].argmax())

    def shutdown(self) -> None:
        self.shut_down = True


def reset() -> None:
    """Forget recorded instances and any script (call between tests)."""
    FakeLLM.instances.clear()
    FakeLLM.script = None
    FakeSamplingParams.instances.clear()


LLM = FakeLLM
SamplingParams = FakeSamplingParams
