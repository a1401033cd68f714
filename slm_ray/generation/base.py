"""The generator interface every backend (HF, vLLM) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Iterator, Sequence


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


class BaseModel(ABC):
    """A loaded language model that turns chat messages into short answers, batch by batch."""

    def __init__(self, config: Any):
        self.config = config
        self.load_seconds: float = 0.0

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
        """Facts for results.json: what was loaded, where, how."""
        return {"name": self.config.name, "backend": self.config.backend, "load_seconds": round(self.load_seconds, 3)}

    def close(self) -> None:
        """Release the model's memory (engines that hold a GPU override this)."""
