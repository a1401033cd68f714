"""Hugging Face transformers backend with a lean batched decode loop.

Short QA answers make the usual ``generate`` loop wasteful: a batch keeps decoding padded rows
until its longest answer ends. Here prompts are sorted by length into padding-aware batches, the
prompts' common prefix (chat template and system prompt) is computed once per batch, rows that hit
EOS or a stop string leave the batch and the KV cache at once, and only the last position's logits
are computed. Greedy at temperature 0; seeded sampling otherwise.

On CPU a decode step for 64 rows costs far less than four steps for 16 (the weights are read once
a step), so short prompts go in big batches (``batch_size``); long prompts are capped by
``MAX_CPU_BATCH_TOKENS``, since their prefill is the cost and huge passes run slower per token.
``bench/bench_generation.py`` measures all this against plain ``generate``."""

from __future__ import annotations

import gc
import inspect
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

from slm_ray.generation.base import BaseModel, Generation, cut_at_stop
from slm_ray.logs import STEP

log = logging.getLogger("slm_ray.generation")
#: A common prompt prefix shorter than this is recomputed per row rather than given its own pass.
MIN_SHARED_PREFIX = 16
#: Most padding tokens in a batch: prefilling more costs about as much as decoding one more batch
#: (on CPU; measured with bench/bench_generation.py).
MAX_PADDING_TOKENS = 1024
#: Most prompt tokens (padding included) prefilled in one forward pass on CPU, where bigger passes
#: run slower per token (memory-bound attention and elementwise work).
MAX_CPU_BATCH_TOKENS = 8192


class HFGenerator(BaseModel):
    """A causal LM from transformers, on CPU or one GPU."""

    def __init__(self, config: Any, cache_dir: str | Path = ".cache"):
        super().__init__(config)
        import torch

        from slm_ray.generation.sources import load_tokenizer_and_model, model_dtype

        started = time.perf_counter()
        self.tokenizer, self.model, self.device = load_tokenizer_and_model(config, cache_dir)
        self.dtype_reason = model_dtype(config, self.device)[1]
        self.load_seconds = time.perf_counter() - started
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.eos_ids = self._eos_ids()
        self._cache_kwarg = "cache" if "cache" in inspect.signature(self.model.forward).parameters else "past_key_values"
        self._sampler = torch.Generator(device=self.device).manual_seed(config.seed)
        self._since_cleanup = 0
        log.info("loaded %s on %s in %.1fs", config.name, self.device, self.load_seconds, extra=STEP)

    def _eos_ids(self) -> set[int]:
        ids = {self.tokenizer.eos_token_id}
        generation_eos = getattr(self.model.generation_config, "eos_token_id", None)
        ids.update(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        return {i for i in ids if i is not None}

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **self.config.chat_template_kwargs)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def truncate_tokens(self, text: str, max_tokens: int) -> str:
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return text if len(ids) <= max_tokens else self.tokenizer.decode(ids[:max(max_tokens, 0)])

    def generate_batches(self, prompts: Sequence[str]) -> Iterator[tuple[list[int], list[Generation]]]:
        # every run samples from its own seed: a generator kept loaded between runs (sweep workers,
        # ``key=a,b``) must answer a run the same whatever it ran before
        self._sampler.manual_seed(self.config.seed)
        encoded = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        for batch in self._batches([len(e) for e in encoded]):
            yield batch, self.run_batch([encoded[i] for i in batch], self._generate)
            self._since_cleanup += len(batch)
            if self._since_cleanup >= self.config.cleanup_every:
                self.cleanup()

    def _batches(self, lengths: list[int]) -> list[list[int]]:
        """Prompt indices, longest first, in batches of at most ``batch_limit`` (``batch_size``) rows.

        A batch also ends before its padding passes ``MAX_PADDING_TOKENS`` or, on CPU, its padded
        prompts pass ``MAX_CPU_BATCH_TOKENS``: many short prompts decode fastest together, while long
        prompts are cheaper to prefill in smaller batches of similar lengths.
        """
        max_tokens = MAX_CPU_BATCH_TOKENS if self.device == "cpu" else math.inf
        batches: list[list[int]] = []
        for i in sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True):
            last = batches[-1] if batches else []
            width = lengths[last[0]] if last else 0  # the first row is the longest
            padding = sum(width - lengths[j] for j in last) + width - lengths[i]
            if (last and len(last) < self.batch_limit and width * (len(last) + 1) <= max_tokens
                    and padding <= MAX_PADDING_TOKENS):
                last.append(i)
            else:
                batches.append([i])
        return batches

    def free_memory(self) -> None:
        self.cleanup()

    def cleanup(self) -> None:
        """Free what long runs accumulate: Python garbage and the CUDA caching allocator's blocks."""
        import torch

        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
        self._since_cleanup = 0

    def _generate(self, rows: list[list[int]]) -> list[Generation]:
        import torch

        shared = self._shared_prefix(rows)
        tails = [r[shared:] for r in rows]
        width = max(len(t) for t in tails)
        pad = self.tokenizer.pad_token_id
        # Layout [shared prefix][padding][own tokens]: padding sits after the prefix, masked out.
        input_ids = torch.tensor([[pad] * (width - len(t)) + t for t in tails], device=self.device)
        mask = torch.tensor([[1] * shared + [0] * (width - len(t)) + [1] * len(t) for t in tails], device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, shared:]
        active = list(range(len(rows)))  # original row of each row still in the batch
        generated: list[list[int]] = [[] for _ in rows]
        cache = None
        with torch.inference_mode():
            if shared:  # the prompts' common prefix (chat template, system prompt) is computed once
                out = self.model(input_ids=torch.tensor([rows[0][:shared]], device=self.device), use_cache=True,
                                 logits_to_keep=1)
                cache = self._cache_of(out)
                cache.batch_repeat_interleave(len(rows))
            for _ in range(self.config.max_new_tokens):
                out = self.model(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                                 use_cache=True, logits_to_keep=1, **{self._cache_kwarg: cache})
                cache = self._cache_of(out)
                next_tokens = self._pick(out.logits[:, -1, :]).tolist()
                keep = []
                for slot, token in enumerate(next_tokens):
                    row = active[slot]
                    if token in self.eos_ids:
                        continue
                    generated[row].append(token)
                    if not self._hit_stop(generated[row]):
                        keep.append(slot)
                if not keep:
                    break
                if len(keep) < len(active):
                    index = torch.tensor(keep, device=self.device)
                    cache.batch_select_indices(index)
                    mask, positions = mask[index], positions[index]
                    next_tokens = [next_tokens[s] for s in keep]
                    active = [active[s] for s in keep]
                input_ids = torch.tensor(next_tokens, device=self.device).unsqueeze(-1)
                mask = torch.cat([mask, mask.new_ones((len(active), 1))], dim=-1)
                positions = positions[:, -1:] + 1
        return [
            Generation(cut_at_stop(self.tokenizer.decode(tokens, skip_special_tokens=True), self.config.stop),
                       prompt_tokens=len(rows[i]), generated_tokens=len(tokens))
            for i, tokens in enumerate(generated)
        ]

    def _shared_prefix(self, rows: list[list[int]]) -> int:
        """Length of the token prefix all rows share, when worth a separate pass (0 otherwise).

        Every row keeps at least its last token: the first step needs a new position per row.
        """
        if len(rows) < 2:
            return 0
        # commonprefix compares element-wise, so it works on lists of token ids too.
        shared = min(len(os.path.commonprefix(rows)), min(len(r) for r in rows) - 1)
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _cache_of(self, out: Any) -> Any:
        return getattr(out, self._cache_kwarg, None) or out.past_key_values

    def _hit_stop(self, tokens: list[int]) -> bool:
        if not self.config.stop:
            return False
        tail = self.tokenizer.decode(tokens[-8:], skip_special_tokens=True)
        return any(s in tail for s in self.config.stop)

    def _pick(self, logits: Any) -> Any:
        """Greedy at temperature 0; otherwise nucleus sampling from the seeded generator."""
        import torch

        if self.config.temperature == 0.0:
            return logits.argmax(dim=-1)
        probs = torch.softmax(logits.float() / self.config.temperature, dim=-1)
        if self.config.top_p < 1.0:
            sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)
            outside = sorted_probs.cumsum(-1) - sorted_probs > self.config.top_p
            sorted_probs[outside] = 0.0
            probs = torch.zeros_like(probs).scatter(-1, sorted_ids, sorted_probs)
        return torch.multinomial(probs, 1, generator=self._sampler).squeeze(-1)

    def describe(self) -> dict[str, Any]:
        params = sum(p.numel() for p in self.model.parameters())
        return {**super().describe(), "device": self.device, "dtype": str(self.model.dtype).removeprefix("torch."),
                "dtype_reason": self.dtype_reason,
                "parameters": params, "source": self.config.source, "path": self.config.path,
                "load_in_8bit": self.config.load_in_8bit,
                "attn_implementation": getattr(self.model.config, "_attn_implementation", None)}

    def close(self) -> None:
        del self.model
        self.cleanup()
