"""The HF generator on the tiny real-architecture models: prompts, batching, stopping, decoding."""

from __future__ import annotations

import pytest
import torch

from slm_ray.data.base import Passage
from slm_ray.experiment import build_generator
from slm_ray.generation.base import cut_at_stop
from slm_ray.generation.prompts import build_prompt

QUESTIONS = ["who got the first nobel prize in physics", "when is the next deadpool movie being released",
             "what does hp mean in war and order", "who wrote the first declaration of human rights",
             "where does the south west wind blow across nigeria", "how many episodes are in chicago fire season 4",
             "who sings love will keep us alive by the eagles"]


@pytest.fixture(scope="module", params=["tiny_llama", "tiny_qwen3"])
def tiny(request, tmp_path_factory, shared_cache):
    from slm_ray.composition import compose_config

    cfg = compose_config([f"model={request.param}", f"experiment.cache_dir={shared_cache}", "model.max_new_tokens=12",
                          "model.stop=[]", "model.batch_size=3"])
    return cfg, build_generator(cfg)


def _reference(generator, prompt: str, max_new_tokens: int) -> str:
    """transformers' own greedy generate on one unpadded prompt: the answer we must reproduce."""
    ids = generator.tokenizer(prompt, add_special_tokens=False, return_tensors="pt")
    out = generator.model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                                   pad_token_id=generator.tokenizer.pad_token_id)
    return generator.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def test_batched_answers_equal_unbatched_greedy_generate(tiny) -> None:
    cfg, generator = tiny
    prompts = [build_prompt(q, None, cfg.prompt, generator, cfg.model.max_prompt_tokens)[0] for q in QUESTIONS]
    answers: dict[int, str] = {}
    batches = list(generator.generate_batches(prompts))
    for indices, generations in batches:
        answers.update({i: g.text for i, g in zip(indices, generations)})
    assert sorted(answers) == list(range(len(prompts)))
    assert [len(ix) for ix, _ in batches] == [3, 3, 1]
    for i, prompt in enumerate(prompts):
        assert answers[i] == _reference(generator, prompt, cfg.model.max_new_tokens), i


def test_chat_template_and_thinking_switch(tiny) -> None:
    cfg, generator = tiny
    prompt = build_prompt("q?", None, cfg.prompt, generator, 512)[0]
    assert prompt.startswith("<|im_start|>system\n" + cfg.prompt.system)
    assert prompt.endswith("<think>\n\n</think>\n\n") == (cfg.model.name == "tiny_qwen3")


def test_long_context_is_truncated_but_the_question_stays(tiny) -> None:
    cfg, generator = tiny
    passages = [Passage("p", "word " * 3000, "Long")]
    prompt, truncated = build_prompt("the question that must survive", passages, cfg.prompt, generator, 300)
    assert truncated and generator.count_tokens(prompt) <= 300
    assert "Question: the question that must survive" in prompt
    short, was_truncated = build_prompt("q", [Passage("p", "short text", "T")], cfg.prompt, generator, 300)
    assert not was_truncated and "Title: T\nshort text" in short


def test_stop_strings_cut_the_answer() -> None:
    assert cut_at_stop(" Paris\nThe capital", ["\n"]) == "Paris"
    assert cut_at_stop("a. b### c", ["###", "."]) == "a"
    assert cut_at_stop(" no stop ", []) == "no stop"


def test_sampling_is_seeded(shared_cache) -> None:
    from slm_ray.composition import compose_config

    def answers(seed: int) -> list[str]:
        cfg = compose_config(["model=tiny_llama", f"experiment.cache_dir={shared_cache}", "model.temperature=1.0",
                              "model.top_p=0.9", f"model.seed={seed}", "model.stop=[]"])
        generator = build_generator(cfg)
        prompts = [generator.render([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]
        return [g.text for _, gens in generator.generate_batches(prompts) for g in gens]

    assert answers(1) == answers(1)
    assert answers(1) != answers(2)


def test_a_kept_generator_samples_each_run_from_its_seed(shared_cache) -> None:
    """A sweep worker or ``key=a,b`` run reuses one loaded generator: what ran before must not
    change a later run's samples."""
    from slm_ray.composition import compose_config

    cfg = compose_config(["model=tiny_llama", f"experiment.cache_dir={shared_cache}", "model.temperature=1.0",
                          "model.seed=3", "model.stop=[]"])
    generator = build_generator(cfg)
    prompts = [generator.render([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]

    def run() -> list[str]:
        return [g.text for _, gens in generator.generate_batches(prompts) for g in gens]

    first = run()
    assert run() == first


def test_a_loaded_model_takes_new_decoding_settings_without_loading_again(shared_cache) -> None:
    from slm_ray.composition import compose_config

    def config(*overrides: str):
        return compose_config(["model=tiny_llama", f"experiment.cache_dir={shared_cache}", "model.seed=5",
                               "model.stop=[]", *overrides])

    sampling = ("model.temperature=1.0", "model.top_p=0.9", "model.max_new_tokens=6")
    fresh = build_generator(config(*sampling))
    kept = build_generator(config())
    prompts = [kept.render([{"role": "user", "content": q}]) for q in QUESTIONS[:4]]

    def answers(generator) -> list[tuple[str, int]]:
        return [(g.text, g.generated_tokens) for _, gens in generator.generate_batches(prompts) for g in gens]

    greedy = answers(kept)
    assert kept.serves(config(*sampling).model)
    kept.adopt(config(*sampling).model)
    assert answers(kept) == answers(fresh) != greedy
    assert max(tokens for _, tokens in answers(kept)) <= 6
    other_weights = config("model.temperature=1.0", "model.dtype=bfloat16").model
    assert not kept.serves(other_weights)
    with pytest.raises(ValueError, match="load it again"):
        kept.adopt(other_weights)


def test_8bit_loading_of_a_saved_model(tiny, tmp_path, shared_cache) -> None:
    """bitsandbytes int8 weights (works on CPU with bitsandbytes >= 0.45) through source=local."""
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed")
    from slm_ray.composition import compose_config

    cfg, generator = tiny
    generator.model.save_pretrained(tmp_path / "m")
    generator.tokenizer.save_pretrained(tmp_path / "m")
    cfg8 = compose_config([f"model={cfg.model.name}", "model.source=local", f"model.path={tmp_path / 'm'}",
                           "model.load_in_8bit=true", f"experiment.cache_dir={shared_cache}", "model.max_new_tokens=4"])
    quantised = build_generator(cfg8)
    assert any(type(m).__name__ == "Linear8bitLt" for m in quantised.model.modules())
    assert quantised.describe()["load_in_8bit"] is True
    [(_, generations)] = list(quantised.generate_batches([quantised.render([{"role": "user", "content": "hi"}])]))
    assert generations[0].generated_tokens >= 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_cuda_and_flash_attention_refused_without_a_gpu(shared_cache) -> None:
    from slm_ray.composition import compose_config
    from slm_ray.errors import ConfigError
    from slm_ray.generation.sources import resolve_attention, resolve_device

    with pytest.raises(ConfigError, match="no CUDA GPU"):
        resolve_device("cuda")
    with pytest.raises(ConfigError, match="flash_attention_2"):
        resolve_attention("flash_attention_2", "cpu")
    assert resolve_attention("auto", "cpu") == "sdpa"


def test_oom_halves_the_batch(shared_cache, monkeypatch) -> None:
    """A batch that does not fit is halved and retried, down to 1; answers stay the same."""
    from slm_ray.composition import compose_config

    cfg = compose_config(["model=tiny_llama", f"experiment.cache_dir={shared_cache}", "model.batch_size=8",
                          "model.stop=[]", "model.max_new_tokens=4"])
    generator = build_generator(cfg)
    prompts = [generator.render([{"role": "user", "content": q}]) for q in QUESTIONS]
    expected = {i: g.text for ix, gens in generator.generate_batches(prompts) for i, g in zip(ix, gens)}
    real_generate = generator._generate

    def fits_two(rows):
        if len(rows) > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return real_generate(rows)

    monkeypatch.setattr(generator, "_generate", fits_two)
    answers = {i: g.text for ix, gens in generator.generate_batches(prompts) for i, g in zip(ix, gens)}
    assert answers == expected
    facts = generator.describe()
    assert facts["batch_limit"] <= 2 and facts["oom_halvings"] >= 1


def test_oom_on_a_single_prompt_fails_clearly(shared_cache, monkeypatch) -> None:
    from slm_ray.composition import compose_config
    from slm_ray.generation.base import GenerationOutOfMemory

    cfg = compose_config(["model=tiny_llama", f"experiment.cache_dir={shared_cache}", "model.batch_size=4"])
    generator = build_generator(cfg)

    def never_fits(rows):
        raise MemoryError()

    monkeypatch.setattr(generator, "_generate", never_fits)
    with pytest.raises(GenerationOutOfMemory, match="out of memory on a single prompt with model=tiny_llama"):
        list(generator.generate_batches([generator.render([{"role": "user", "content": q}]) for q in QUESTIONS[:3]]))
    assert generator.batch_limit == 1
