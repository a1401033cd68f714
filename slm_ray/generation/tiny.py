"""Tiny random-weight models of the real Llama and Qwen3 classes, with a locally built tokenizer.

They run the whole pipeline (chat template, batching, padding, stopping) in seconds on a CPU,
which is what tests need; their answers are noise by design.
"""

from __future__ import annotations

import itertools
from pathlib import Path

# ChatML, as SmolLM2 and Qwen3 use; honours enable_thinking=False like Qwen3's template does.
CHATML_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
VOCAB_SIZE = 2048


def _training_text() -> list[str]:
    """Questions and passages of the built-in data: a vocabulary that fits the task."""
    from slm_ray.data.corpus import builtin_nq_corpus

    passages = builtin_nq_corpus()
    return [f"{p.title}\n{p.text}" for p in itertools.islice(passages, 1500)]


def build_tokenizer(cache_dir: str | Path):
    """A byte-level BPE tokenizer trained on built-in text, cached after the first build (a cache
    entry like the others: checked against its manifest, rebuilt when damaged)."""
    from transformers import AutoTokenizer

    from slm_ray.store.cache_entry import load_or_build

    folder = Path(cache_dir) / "models" / "tiny-tokenizer"
    load_or_build(folder, _train_tokenizer, load=lambda f: AutoTokenizer.from_pretrained(f), what="tiny tokenizer")
    return AutoTokenizer.from_pretrained(folder)


def _train_tokenizer(staging: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(_training_text(), trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                      bos_token=None, chat_template=CHATML_TEMPLATE)
    wrapped.save_pretrained(staging)


def build_model(architecture: str, vocab_size: int, eos_token_id: int, pad_token_id: int, seed: int):
    """A 2-layer, 64-wide model of the real class, seeded so runs are reproducible."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM

    shape = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                 eos_token_id=eos_token_id, pad_token_id=pad_token_id, bos_token_id=None, tie_word_embeddings=False)
    with torch.random.fork_rng():  # seed the weights without touching the caller's RNG
        torch.manual_seed(seed)
        if architecture == "llama":
            return LlamaForCausalLM(LlamaConfig(**shape))
        return Qwen3ForCausalLM(Qwen3Config(head_dim=16, **shape))
