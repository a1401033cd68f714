"""From an example and its passages to the exact prompt string the model sees.

The question must always fit: when passages overflow the prompt budget they are cut, never the
question or the instructions around it; a question that does not fit alone is refused (PromptTooLong).
"""

from __future__ import annotations

from typing import Any, Sequence

from slm_ray.data.base import Passage
from slm_ray.errors import DataError
from slm_ray.generation.base import BaseModel

#: A question this many characters per prompt token is over any budget without tokenising it (a
#: token is rarely more than ~10 characters): a 5 MB question is refused at once, not after minutes.
CHARS_PER_TOKEN_BOUND = 16


class PromptTooLong(DataError):
    """The question (with the instructions around it) does not fit ``model.max_prompt_tokens``."""


def _question_fits(question: str, prompt: str, model: BaseModel, max_prompt_tokens: int) -> None:
    if len(question) > CHARS_PER_TOKEN_BOUND * max_prompt_tokens:
        raise PromptTooLong(f"its question is {len(question):,} characters long, too long for "
                            f"model.max_prompt_tokens={max_prompt_tokens}")
    tokens = model.count_tokens(prompt)
    if tokens > max_prompt_tokens:
        raise PromptTooLong(f"its prompt is {tokens:,} tokens without any passage, over "
                            f"model.max_prompt_tokens={max_prompt_tokens}")


def render_passages(passages: Sequence[Passage], prompt_cfg: Any) -> str:
    """Passages as numbered blocks with their titles."""
    return prompt_cfg.passage_separator.join(
        prompt_cfg.passage.format(index=i, title=p.title or "(untitled)", text=p.text)
        for i, p in enumerate(passages, start=1)
    )


def build_messages(question: str, context: str | None, prompt_cfg: Any) -> list[dict[str, str]]:
    """Chat messages: the optional system prompt and one user turn."""
    if context is None:
        user = prompt_cfg.closed_book.format(question=question)
    else:
        user = prompt_cfg.with_context.format(question=question, context=context)
    messages = [{"role": "system", "content": prompt_cfg.system}] if prompt_cfg.system else []
    return messages + [{"role": "user", "content": user}]


def build_prompt(question: str, passages: Sequence[Passage] | None, prompt_cfg: Any, model: BaseModel,
                 max_prompt_tokens: int) -> tuple[str, bool]:
    """(rendered prompt, whether the context was truncated to fit ``max_prompt_tokens``)."""
    if passages is None:
        prompt = model.render(build_messages(question, None, prompt_cfg))
        _question_fits(question, prompt, model, max_prompt_tokens)
        return prompt, False
    _question_fits(question, model.render(build_messages(question, "", prompt_cfg)), model, max_prompt_tokens)
    context = render_passages(passages, prompt_cfg)
    prompt = model.render(build_messages(question, context, prompt_cfg))
    overflow = model.count_tokens(prompt) - max_prompt_tokens
    if overflow <= 0:
        return prompt, False
    budget = model.count_tokens(context) - overflow
    context = model.truncate_tokens(context, max(0, budget))
    return model.render(build_messages(question, context, prompt_cfg)), True
