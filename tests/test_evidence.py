"""Per-passage evidence and MRR in retrieval runs, older prediction files, and the low-recall warning
(tiny models: only the plumbing matters here; tests/test_end_to_end_evidence.py runs the real SmolLM2)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from slm_ray.evaluation.metrics import passages_with_answer
from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment
from slm_ray.store.run_folder import read_predictions

NEW_KEYS = ("retrieved", "first_answer_rank")


def _rows(cfg) -> list[dict]:
    return read_predictions(output_dir(cfg) / PREDICTIONS)


def test_each_retrieved_passage_carries_its_rank_score_and_whether_it_holds_an_answer(make_config) -> None:
    cfg = make_config("model=tiny_llama", "dataset.limit=16", "experiment_mode=retriever_context", "retriever.k=3")
    results = run_experiment(cfg, show_progress=False)
    rows = _rows(cfg)
    for row in rows:
        evidence = row["retrieved"]
        assert [e["id"] for e in evidence] == [c["id"] for c in row["contexts"]]
        assert [e["rank"] for e in evidence] == [1, 2, 3]
        assert [e["score"] for e in evidence] == sorted((e["score"] for e in evidence), reverse=True)
        texts = [f"{c['title']}\n{c['text']}" for c in row["contexts"]]
        assert [e["has_answer"] for e in evidence] == passages_with_answer(texts, row["answers"])
        first = next((e["rank"] for e in evidence if e["has_answer"]), None)
        assert row["first_answer_rank"] == first
        assert row["metrics"]["retrieval_mrr"] == (1 / first if first else 0.0)
        assert row["metrics"]["retrieval_recall"] == float(first is not None)
    mrr, recall = results["metrics"]["retrieval_mrr"], results["metrics"]["retrieval_recall"]
    assert mrr["n"] == 16 and mrr["mean"] == pytest.approx(sum(r["metrics"]["retrieval_mrr"] for r in rows) / 16)
    assert 0 < mrr["mean"] <= recall["mean"]  # BM25 finds most gold passages, not always first
    assert results["retrieval_warning"] is None
    closed = run_experiment(make_config("model=tiny_llama", "dataset.limit=4"), show_progress=False)
    assert "retrieval_mrr" not in closed["metrics"] and closed["retrieval_warning"] is None


def test_a_folder_written_before_the_evidence_existed_resumes_and_verifies(make_config) -> None:
    """Lines of an older version (no ``retrieved``, no ``retrieval_mrr``): the run resumes with the
    same inputs, the new lines carry evidence, and every line counts in the MRR."""
    from slm_ray.report import verify

    cfg = make_config("model=tiny_llama", "dataset.limit=12", "experiment_mode=retriever_context", "retriever.k=3")
    full = run_experiment(cfg, show_progress=False)
    path = output_dir(cfg) / PREDICTIONS
    old_lines = []
    for line in path.read_text().splitlines()[:8]:
        row = json.loads(line)
        for key in NEW_KEYS:
            row.pop(key)
        row["metrics"].pop("retrieval_mrr")
        old_lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    path.write_text("".join(old_lines))
    (output_dir(cfg) / "results.json").unlink()
    resumed = run_experiment(cfg, show_progress=False)
    rows = _rows(cfg)
    assert len(rows) == 12 and sum("retrieved" in r for r in rows) == 4  # old lines kept as written
    assert resumed["metrics"]["retrieval_mrr"] == full["metrics"]["retrieval_mrr"]
    assert resumed["metrics"]["retrieval_recall"] == full["metrics"]["retrieval_recall"]
    assert verify(output_dir(cfg)) == (1, [])
    # results.json of the older version (no retrieval_mrr) still verifies
    results_path = output_dir(cfg) / "results.json"
    old_results = json.loads(results_path.read_text())
    old_results["metrics"].pop("retrieval_mrr")
    results_path.write_text(json.dumps(old_results))
    assert verify(output_dir(cfg)) == (1, [])


def _unanswerable(tmp_path: Path, n: int) -> Path:
    """Questions whose answers no passage of the built-in corpus holds."""
    rows = [{"question": f"what is the code word number {i}", "answers": [f"qxzvy{i}"]} for i in range(n)]
    path = tmp_path / "unanswerable.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_retrieval_that_never_finds_an_answer_is_flagged_in_results_log_and_summary(make_config, tmp_path: Path,
                                                                                   caplog) -> None:
    from slm_ray.evaluation.retrieval_check import MIN_QUESTIONS
    from slm_ray.reporting.summary import write_summary

    data = _unanswerable(tmp_path, MIN_QUESTIONS)
    sweep = tmp_path / "sweep"
    common = ("model=tiny_llama", "dataset=file", f"dataset.path={data}", "dataset.name=codewords",
              "experiment_mode=retriever_context", "retriever.k=2", f"experiment.output_dir={sweep / 'trials'}")
    with caplog.at_level(logging.WARNING, logger="slm_ray"):
        flagged = run_experiment(make_config(*common, "experiment.name=flagged"), show_progress=False)
    warning = flagged["retrieval_warning"]
    assert warning.startswith(f"retrieved passages hold an answer for 0 of {MIN_QUESTIONS} questions (recall@2 0.00)")
    assert "the corpus builtin_nq may not cover dataset codewords" in warning and "corpus=file" in warning
    assert warning in caplog.text
    assert json.loads((sweep / "trials" / "flagged" / "results.json").read_text())["retrieval_warning"] == warning
    few = run_experiment(make_config(*common, "experiment.name=too_few", f"dataset.limit={MIN_QUESTIONS - 1}"),
                         show_progress=False)
    assert few["metrics"]["retrieval_recall"]["mean"] == 0.0 and few["retrieval_warning"] is None  # too few to judge
    summary = write_summary(sweep)
    assert {r["trial"] for r in summary["rows"]} == {"flagged", "too_few"}
    assert json.loads((sweep / "summary.json").read_text())["retrieval_warnings"] == {"flagged": warning}
    markdown = (sweep / "summary.md").read_text()
    assert "## Retrieval warnings" in markdown and f"- **flagged**: {warning}" in markdown
    assert "too_few**" not in markdown
