"""From an example and its passages to the exact prompt string the model sees.

The question must always fit: when passages overflow the prompt budget they are cut, never the
question or the instructions around it.
"""

from __future__ import annotations

from typing import Any, Sequence

from slm_ray.data.base import Passage
from slm_ray.generation.base import BaseModel


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
        return model.render(build_messages(question, None, prompt_cfg)), False
    context = render_passages(passages, prompt_cfg)
    prompt = model.render(build_messages(question, context, prompt_cfg))
    overflow = model.count_tokens(prompt) - max_prompt_tokens
    if overflow <= 0:
        return prompt, False
    budget = model.count_tokens(context) - overflow
    context = model.truncate_tokens(context, budget)
    return model.render(build_messages(question, context, prompt_cfg)), True
