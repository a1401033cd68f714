"""Rebuild a sweep's summary from its trial folders, or check every number of it.

    slm-ray report outputs/sweeps/sizes_500
    slm-ray report --verify outputs/sweeps/sizes_500      (or an experiment folder)

Reads trials/*/results.json and trial.json (plus sweep.json and sweep_stats.json when present) and
writes summary.csv, summary.json, summary.md and the plots (token_recall.png, memory.png,
throughput.png) into the sweep folder, then prints the Markdown table.

``--verify`` writes nothing: it re-scores every prediction of every finished trial from its
predictions.jsonl (score_example against the row's answers and contexts), aggregates them with the
bootstrap settings of the trial's config.json, and compares with results.json (and, for a sweep,
with summary.json and summary.csv). It also checks that every example of the dataset has exactly
one prediction line. Exit 0 with "verified N trials", or exit 1 naming each trial, metric and both
values that differ.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path
from typing import Any, Sequence

from slm_ray.cli import run_cli

VERIFY_FAILED = 1
#: Metrics added after runs were already on disk: a line or results.json without them is older, not wrong.
LATER_METRICS = frozenset({"retrieval_mrr"})


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--verify" in args:
        args.remove("--verify")
        return run_cli(_verify_cli, __doc__ or "", args)
    return run_cli(_report, __doc__ or "", args)


def _report(arguments: list[str], print_config: bool) -> int:
    from slm_ray.errors import SlmRayError
    from slm_ray.reporting.summary import write_summary
    from slm_ray.store.run_folder import holder_of

    if len(arguments) != 1:
        raise SlmRayError("give one sweep folder: slm-ray report outputs/sweeps/<name>")
    folder = Path(arguments[0])
    if not folder.is_dir():
        raise SlmRayError(f"sweep folder not found: {folder}")
    if not (folder / "sweep.json").is_file() and not (folder / "trials").is_dir():
        raise SlmRayError(f"{folder} is not a sweep folder (no sweep.json and no trials/)")
    holder = holder_of(folder)
    if holder is not None:
        raise SlmRayError(f"{folder} is a sweep that is running ({holder}): its summary would be partial, and the "
                          "sweep writes the whole one when it ends; run slm-ray report again then")
    summary = write_summary(folder)
    print((folder / "summary.md").read_text(encoding="utf-8"))
    print(f"wrote {', '.join(summary['files'] + summary['plots'])}")
    return 0


# --- --verify --------------------------------------------------------------------------------------


def _verify_cli(arguments: list[str], print_config: bool) -> int:
    from slm_ray.errors import SlmRayError

    if len(arguments) != 1:
        raise SlmRayError("give one folder: slm-ray report --verify <sweep folder or experiment folder>")
    folder = Path(arguments[0])
    if not folder.is_dir():
        raise SlmRayError(f"folder not found: {folder}")
    checked, problems = verify(folder)
    for problem in problems:
        print(f"MISMATCH {problem}", file=sys.stderr)
    if problems:
        print(f"verification FAILED: {len(problems)} difference(s) in {folder}", file=sys.stderr)
        return VERIFY_FAILED
    print(f"verified {checked} trials")
    return 0


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def verify(folder: str | Path) -> tuple[int, list[str]]:
    """(trials checked, differences found) for a sweep folder or one experiment folder."""
    from slm_ray.errors import SlmRayError
    from slm_ray.store.run_folder import REPLACED_MARK, RESULTS

    folder = Path(folder)
    if (folder / RESULTS).is_file():
        trials = {folder.name: folder}
        sweep = False
    elif (folder / "trials").is_dir():
        trials = {p.name: p for p in sorted((folder / "trials").iterdir())
                  if p.is_dir() and (p / RESULTS).is_file() and REPLACED_MARK not in p.name}
        sweep = True
    else:
        from slm_ray.store.run_folder import RunFolder

        if RunFolder(folder).has_answers():
            raise SlmRayError(f"{folder} is a run that is not finished ({RunFolder(folder).count_predictions()} "
                              "predictions, no results.json): run the same command again to complete it")
        raise SlmRayError(f"{folder} holds neither results.json nor trials/: nothing to verify")
    problems: list[str] = []
    recomputed: dict[str, dict[str, Any]] = {}
    for name, path in trials.items():
        try:
            recomputed[name] = _verify_trial(name, path, problems)
        except SlmRayError as exc:
            problems.append(f"{name}: {exc}")
    if sweep:
        _verify_summary(folder, recomputed, problems)
    return len(trials), problems


def _verify_trial(name: str, path: Path, problems: list[str]) -> dict[str, Any]:
    """Re-score one trial; append its differences to ``problems``; return the recomputed summary row."""
    from slm_ray.errors import SlmRayError
    from slm_ray.evaluation.metrics import aggregate, score_example
    from slm_ray.store.run_folder import CONFIG, PREDICTIONS, RESULTS, RunFolder, answers_example, parse_predictions

    run = RunFolder(path)
    results, raw_config = run.raw_results(), run.config()
    if results is None or raw_config is None:
        raise SlmRayError(f"unreadable or missing {RESULTS} or {CONFIG} in {path}")
    experiment = raw_config.get("experiment") or {}
    resamples = int(experiment.get("bootstrap_resamples", 1000))
    seed = int(experiment.get("seed", 0))
    rows, bad_lines = parse_predictions(path / PREDICTIONS)
    problems.extend(f"{name}: {line}" for line in bad_lines)
    unique = {row["id"]: row for row in rows}
    examples = _dataset_examples(raw_config)
    order = None if examples is None else [e.id for e in examples]
    if examples is not None:
        problems.extend(f"{name}: {change}" for change in _input_changes(run, raw_config, examples))
        for example in examples:
            row = unique.get(example.id)
            if row is not None and not answers_example(row, example):
                problems.append(f"{name}: example {example.id!r}: the dataset's question or answers differ from "
                                "the ones answered (was the data file edited after the run?)")
    if order is not None:
        missing = [i for i in order if i not in unique]
        extra = [i for i in unique if i not in set(order)]
        if missing:
            problems.append(f"{name}: {len(missing)} example(s) of the dataset have no prediction, "
                            f"e.g. {missing[:3]}")
        if extra:
            problems.append(f"{name}: {len(extra)} prediction(s) for examples not in the dataset, e.g. {extra[:3]}")
        position = {example_id: i for i, example_id in enumerate(order)}
        ordered = sorted((r for r in unique.values() if r.get("id") in position), key=lambda r: position[r["id"]])
    else:
        ordered = list(unique.values())
    mode = raw_config.get("experiment_mode")
    scores = []
    for row in ordered:
        contexts = row.get("contexts")
        texts = ([f"{c.get('title', '')}\n{c.get('text', '')}" for c in contexts]
                 if mode == "retriever_context" and contexts is not None else None)
        score = score_example(row.get("prediction") or "", list(row.get("answers") or []), texts)
        for metric, value in score.items():
            if metric in LATER_METRICS and metric not in (row.get("metrics") or {}):
                continue  # a line written before the metric existed
            stored = (row.get("metrics") or {}).get(metric)
            if not _same(stored, value):
                problems.append(f"{name}: example {row.get('id')!r} {metric}: predictions.jsonl says {stored}, "
                                f"recomputed {value}")
        scores.append(score)
    metrics = aggregate(scores, n_resamples=resamples, seed=seed)
    if not _same(results.get("n_examples"), len(ordered)):
        problems.append(f"{name}: n_examples: results.json says {results.get('n_examples')}, "
                        f"recomputed {len(ordered)}")
    stored_metrics = results.get("metrics") or {}
    for metric in sorted(set(metrics) | set(stored_metrics)):
        if metric in LATER_METRICS and metric not in stored_metrics:
            continue  # results.json written before the metric existed
        for field in ("mean", "ci_low", "ci_high", "n"):
            stored = (stored_metrics.get(metric) or {}).get(field)
            value = (metrics.get(metric) or {}).get(field)
            if not _same(stored, value):
                problems.append(f"{name}: {metric}.{field}: results.json says {stored}, recomputed {value}")
    return {"n_examples": len(ordered), "metrics": metrics}


def _input_changes(run: Any, raw_config: dict[str, Any], examples: list[Any]) -> list[str]:
    """How the run's recorded inputs (inputs.json) differ from its config and data as they are now."""
    from slm_ray.config import ExperimentConfig
    from slm_ray.inputs import run_inputs
    from slm_ray.store.run_folder import INPUTS

    stored = run.inputs()
    if stored is None:
        return [f"{INPUTS} is missing or unreadable: what the answers were made from is unknown"]
    try:
        now = run_inputs(ExperimentConfig.model_validate(raw_config), examples)
    except Exception as exc:  # a corpus on another machine: the dataset checks below still run
        print(f"note: inputs not recomputable here ({type(exc).__name__}); checking the dataset only", file=sys.stderr)
        return []
    return [f"the answers were made from other inputs than its config and data now: {change}"
            for change in now.changes_from(stored)]


def _dataset_examples(raw_config: dict[str, Any]) -> list[Any] | None:
    """The examples of the trial's dataset in its order (None when the dataset cannot be read here)."""
    from slm_ray.config import ExperimentConfig
    from slm_ray.experiment import build_dataset

    try:
        return build_dataset(ExperimentConfig.model_validate(raw_config))
    except Exception as exc:  # masked secrets, a dataset on another machine: fall back to the file
        print(f"note: dataset not readable here ({type(exc).__name__}); checking predictions as written",
              file=sys.stderr)
        return None


def _verify_plan(folder: Path, recomputed: dict[str, Any], in_summary: set[str], problems: list[str]) -> None:
    """Every trial of sweep.json has results (summary.json or not), made with the plan's settings."""
    from slm_ray.store.fingerprints import stable_hash, without_resolved
    from slm_ray.store.run_folder import RunFolder

    try:
        planned = json.loads((folder / "sweep.json").read_text(encoding="utf-8")).get("trials") or []
    except (OSError, ValueError, AttributeError):
        return
    for trial in planned:
        name = trial.get("name")
        if name in recomputed:
            inputs = RunFolder(folder / "trials" / name).inputs()
            expected = trial.get("answer_settings")
            if expected and inputs is not None and stable_hash(without_resolved(inputs.settings)) != expected:
                problems.append(f"{name}: its answers were made with other settings than the sweep's plan "
                                "(a run with other overrides wrote into its folder?)")
        elif name not in in_summary:
            run = RunFolder(folder / "trials" / name)
            state = (f"not finished ({run.count_predictions()} predictions)" if run.has_answers()
                     else "not run, or its folder is missing")
            problems.append(f"{name}: planned in sweep.json but {state}: run the sweep again")


def _verify_summary(folder: Path, recomputed: dict[str, dict[str, Any]], problems: list[str]) -> None:
    """summary.json and summary.csv agree with the recomputed metrics (where they exist); every trial
    they list has its folder and results, and none failed or is unfinished."""
    from slm_ray.store.results import flat_metrics

    sources: dict[str, dict[str, dict[str, Any]]] = {}
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        sources["summary.json"] = {r["trial"]: r for r in summary.get("trials", [])}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        with open(folder / "summary.csv", encoding="utf-8", newline="") as handle:
            sources["summary.csv"] = {r["trial"]: r for r in csv.DictReader(handle)}
    except (OSError, KeyError):
        pass
    for name, row in (sources.get("summary.json") or {}).items():
        status = row.get("status")
        if status == "failed":
            problems.append(f"{name}: the trial failed: {row.get('error')}")
        elif status == "missing":
            problems.append(f"{name}: {row.get('error')}")
        elif status != "ok":
            problems.append(f"{name}: the trial is not finished ({status}): run the sweep again to complete it")
        elif name not in recomputed:
            trial = folder / "trials" / name
            why = "its folder is missing" if not trial.is_dir() else "its results.json is missing"
            problems.append(f"{name}: listed in summary.json as ok, but {why} ({trial})")
    _verify_plan(folder, recomputed, set(sources.get("summary.json") or {}), problems)
    for source, rows in sources.items():
        for name, values in recomputed.items():
            row = rows.get(name)
            if row is None:
                problems.append(f"{name}: missing from {source}")
                continue
            for column, value in flat_metrics(values["n_examples"], values["metrics"]).items():
                stored = row.get(column)
                if source == "summary.csv":
                    stored = None if stored in (None, "") else float(stored)
                if not _same(stored, value):
                    problems.append(f"{name}: {column}: {source} says {stored}, recomputed {value}")


if __name__ == "__main__":
    sys.exit(main())
