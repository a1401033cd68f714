"""The generator interface every backend (HF, vLLM) implements."""

from __future__ import annotations

import gc
import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence, TypeVar

from slm_ray.errors import SlmRayError

log = logging.getLogger("slm_ray.generation")
Row = TypeVar("Row")


@dataclass(frozen=True)
class Generation:
    """One answer: the text cut at the first stop string, and token counts for throughput."""

    text: str
    prompt_tokens: int
    generated_tokens: int


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """Text before the first stop string, stripped: the same rule for every backend."""
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos)
    return text[:cut].strip()


class GenerationOutOfMemory(SlmRayError):
    """Even a batch of one prompt does not fit in memory."""


def is_out_of_memory(exc: BaseException) -> bool:
    """torch.cuda.OutOfMemoryError, a host MemoryError, or a backend's "out of memory" RuntimeError."""
    return (isinstance(exc, MemoryError) or type(exc).__name__ == "OutOfMemoryError"
            or (isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()))


#: Model settings that only steer decoding. A loaded model takes new values of these for its next
#: run instead of loading again, so a sweep over temperatures loads each model once per worker.
DECODING_SETTINGS = ("temperature", "top_p", "max_new_tokens", "stop")


def load_settings(model_config: Any) -> dict[str, Any]:
    """The model settings that decide what gets loaded: all but ``DECODING_SETTINGS``."""
    data = model_config.model_dump(by_alias=True)
    for key in DECODING_SETTINGS:
        data.pop(key, None)
    return data


class BaseModel(ABC):
    """A loaded language model that turns chat messages into short answers, batch by batch."""

    def __init__(self, config: Any):
        self.config = config
        self.load_seconds: float = 0.0
        #: Largest batch that has fitted so far: halved on each out-of-memory error.
        self.batch_limit: int = config.batch_size
        self.oom_halvings: int = 0

    def serves(self, model_config: Any) -> bool:
        """Whether this loaded model can run ``model_config`` (it differs at most in decoding)."""
        return load_settings(model_config) == load_settings(self.config)

    def adopt(self, model_config: Any) -> None:
        """Decode the next run with ``model_config``'s settings; the loaded model must serve it."""
        if model_config == self.config:
            return
        if not self.serves(model_config):
            raise ValueError(f"the loaded model {self.config.name} cannot run model={model_config.name} with "
                             "other load settings: load it again")
        self.config = model_config
        self.decoding_changed()

    def decoding_changed(self) -> None:
        """Called after ``adopt``: a backend that prepared decoding parameters rebuilds them here."""

    def run_batch(self, rows: list[Row], generate: Callable[[list[Row]], list[Generation]]) -> list[Generation]:
        """``generate(rows)`` in pieces of at most ``batch_limit`` rows; out of memory halves the
        limit and retries, down to one row, after which the run fails with a clear message."""
        results: list[Generation] = []
        start = 0
        while start < len(rows):
            piece = rows[start:start + self.batch_limit]
            try:
                results.extend(generate(piece))
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self.free_memory()
                if len(piece) == 1:
                    raise GenerationOutOfMemory(
                        f"out of memory on a single prompt with model={self.config.name}: lower "
                        "model.max_prompt_tokens or retriever.k, or try model.load_in_8bit=true") from None
                self.batch_limit = len(piece) // 2
                self.oom_halvings += 1
                log.warning("out of memory on a batch of %d; retrying with batches of %d", len(piece), self.batch_limit)
                continue
            start += len(piece)
        return results

    def free_memory(self) -> None:
        """Release what a failed or long run holds (backends with a GPU cache extend this)."""
        gc.collect()

    @abstractmethod
    def render(self, messages: list[dict[str, str]]) -> str:
        """The prompt string after the model's chat template."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of a rendered prompt: used to fit contexts into the prompt budget."""

    @abstractmethod
    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        """The longest prefix of ``text`` with at most ``max_tokens`` tokens."""

    @abstractmethod
    def generate_batches(self, prompts: Sequence[str]) -> Iterator[tuple[list[int], list[Generation]]]:
        """Answers for ``prompts``, yielded batch by batch as (prompt indices, generations).

        The backend decides the order (length-sorted batches are much faster); callers use the
        indices to put answers back in place and to save each batch as soon as it is done.
        """

    def describe(self) -> dict[str, Any]:
        """Facts for results.json: what was loaded, where, how, and any batch halving it needed."""
        return {"name": self.config.name, "backend": self.config.backend, "load_seconds": round(self.load_seconds, 3),
                "batch_size": self.config.batch_size, "batch_limit": self.batch_limit, "oom_halvings": self.oom_halvings}

    def close(self) -> None:
        """Release the model's memory (engines that hold a GPU override this)."""
