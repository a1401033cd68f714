"""A sweep's summary, rebuilt from its folder alone: summary.csv/json/md and PNG plots.

One row per trial, read from ``trials/<name>/results.json`` (what the experiment measured),
``trials/<name>/trial.json`` (where it ran, or why it failed) and ``sweep.json`` (the plan: trials
that never ran show as pending; a trial whose folder was deleted since the previous summary, as
missing). The retriever's memory is the shared actor's, from ``sweep_stats.json`` when the sweep
engine wrote it, else from the trial's retriever_info.

The paired section answers the sweep's question on the same questions: for each model and dataset
(and any other grid setting), the gold passage against closed book, each retrieval setting against
closed book, and each against the gold passage (the retrieval gap), from the trials' predictions
(``slm_ray.evaluation.paired``). A pair whose trial did not finish is skipped, and the summary says so.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from pathlib import Path
from typing import Any

from slm_ray.config import EXPERIMENT_MODES
from slm_ray.store.io import atomic_write_json, atomic_write_text, read_json
from slm_ray.store.results import peak_gpu
from slm_ray.errors import writes_to
from slm_ray.store.run_folder import OUTPUT_SETTING, REPLACED_MARK, RESULTS, RunFolder
from slm_ray.store.sweep_folder import PLAN, STATS, SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD, TRIAL_RECORD, TRIALS

log = logging.getLogger("slm_ray.sweep")

COLUMNS = (
    "trial", "model", "dataset", "mode", "retriever", "k", "n_examples",
    "token_recall", "token_recall_ci_low", "token_recall_ci_high", "exact_match", "f1", "match",
    "retrieval_recall", "examples_per_second", "tokens_per_second", "model_load_seconds", "model_loaded_in_trial",
    "model_peak_rss_mb", "model_peak_gpu_mb", "retriever_peak_rss_mb", "retriever_peak_gpu_mb",
    "node_id", "actor", "status", "error",
)
#: The order a reader expects: closed book, gold passage, retrieval (the config's order of modes).
READING_ORDER = {mode: i for i, mode in enumerate(EXPERIMENT_MODES)}
PLOTS = ("token_recall.png", "memory.png", "throughput.png")
#: Written besides PLOTS when a sweep varies retriever.k for some model, dataset and retriever.
RECALL_VS_K_PLOT = "recall_vs_k.png"
#: Metrics of the paired table in summary.md (summary.json holds every metric of the predictions).
PAIRED_TABLE_METRICS = ("token_recall", "match")
#: A trial whose folder was there at the previous summary and is gone now (deleted by hand).
MISSING = "missing"
#: Grid axes that say which model, dataset or mode a trial is (the rest group or label trials).
_IDENTITY_AXES = frozenset({"model", "model.name", "dataset", "dataset.name", "experiment_mode"})


def _retriever_memory(stats: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Peak memory of each shared retriever actor of the last run, by index key."""
    found: dict[str, dict[str, Any]] = {}
    for run in [((stats or {}).get("last_run") or {})]:
        for actor in run.get("retriever_actors") or []:
            if actor.get("index_key") and actor.get("memory"):
                found[actor["index_key"]] = actor["memory"]
    return found


def collect_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per trial of the sweep, in reading order: by model and dataset as planned, then closed
    book, gold passage, retrieval (the plan runs longest first); trials found only on disk come last."""
    sweep_dir = Path(sweep_dir)
    plan = read_json(sweep_dir / PLAN) or {}
    stats = read_json(sweep_dir / STATS)
    shared_memory = _retriever_memory(stats)
    planned = {t["name"]: t for t in plan.get("trials", [])}
    earlier = {r.get("trial"): r.get("status") for r in (read_json(sweep_dir / SUMMARY_JSON) or {}).get("trials", [])
               if isinstance(r, dict)}
    trials_dir = sweep_dir / TRIALS
    names = list(planned)
    if trials_dir.is_dir():
        names += sorted(p.name for p in trials_dir.iterdir() if p.is_dir() and p.name not in planned
                        and REPLACED_MARK not in p.name
                        and ((p / RESULTS).is_file() or (p / TRIAL_RECORD).is_file()))
    rows = [_row(name, planned.get(name, {}), trials_dir / name, shared_memory, earlier.get(name)) for name in names]
    models: dict[Any, int] = {}
    datasets: dict[Any, int] = {}
    for row in rows:
        models.setdefault(row["model"], len(models))
        datasets.setdefault(row["dataset"], len(datasets))
    return sorted(rows, key=lambda row: (row["trial"] not in planned, models[row["model"]], datasets[row["dataset"]],
                                         READING_ORDER.get(row["mode"], len(READING_ORDER)),
                                         str(row["retriever"]), row["k"] or 0))


def _row(name: str, planned: dict[str, Any], folder: Path, shared_memory: dict[str, dict[str, Any]],
         earlier: str | None = None) -> dict[str, Any]:
    """The trial's summary row; ``earlier``: its status in the previous summary, which tells a folder
    deleted by hand (``missing``) from one never made (``pending``)."""
    run = RunFolder(folder)
    results = run.results()
    record = read_json(folder / TRIAL_RECORD) or {}
    row: dict[str, Any] = {c: None for c in COLUMNS}
    row.update(trial=name, model=planned.get("model"), dataset=planned.get("dataset"),
               mode=planned.get("experiment_mode"), retriever=planned.get("retriever"), k=planned.get("k"),
               node_id=record.get("node_id"), actor=record.get("actor"),
               model_loaded_in_trial=record.get("model_loaded_now"))
    if results is not None and record.get("status") != "failed":
        retriever_info = results.retriever_info or {}
        retriever_memory = (shared_memory.get(retriever_info.get("index_key"))
                            or retriever_info.get("memory") or results.memory.get("retriever") or {})
        row.update(results.flat())
        row.update(model=results.model, dataset=results.dataset, mode=results.experiment_mode,
                   retriever=results.retriever, k=results.k,
                   retriever_peak_rss_mb=retriever_memory.get("peak_rss_mb"),
                   retriever_peak_gpu_mb=peak_gpu(retriever_memory), status="ok", error=None)
    elif record.get("status") == "failed":  # its last attempt failed, whatever files are in its folder
        row.update(status="failed", error=record.get("error"))
    elif not folder.is_dir() and earlier not in (None, "pending"):
        row.update(status=MISSING, error=f"its folder {folder} is gone (it was {earlier}): run the sweep again")
    else:
        done = run.count_predictions()
        row.update(status=f"incomplete ({done} predictions)" if done else "pending", n_examples=done or None)
    return row


def write_summary(sweep_dir: str | Path) -> dict[str, Any]:
    """Write summary.csv, summary.json, summary.md and the plots; returns paths and status counts.
    A fault writing them (full disk, read-only) is one line naming the folder (``FolderUnusable``)."""
    with writes_to(sweep_dir, OUTPUT_SETTING):
        return _write_summary(Path(sweep_dir))


def _write_summary(sweep_dir: Path) -> dict[str, Any]:
    rows = collect_rows(sweep_dir)
    plan = read_json(sweep_dir / PLAN) or {}
    counts: dict[str, int] = {}
    for row in rows:
        status = row["status"] if row["status"] in ("ok", "failed", "pending", MISSING) else "incomplete"
        counts[status] = counts.get(status, 0) + 1
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    paired = paired_comparisons(sweep_dir, rows, plan)
    atomic_write_text(sweep_dir / SUMMARY_CSV, buffer.getvalue())
    warnings = retrieval_warnings(sweep_dir, rows)
    atomic_write_json(sweep_dir / SUMMARY_JSON, {"sweep": plan.get("name", sweep_dir.name),
                                                   "description": plan.get("description"),
                                                   "counts": counts, "trials": rows, "retrieval_warnings": warnings,
                                                   "paired": paired["pairs"], "paired_skipped": paired["skipped"]})
    atomic_write_text(sweep_dir / SUMMARY_MD, render_markdown(plan.get("name", sweep_dir.name),
                                                                plan.get("description"), rows,
                                                                read_json(sweep_dir / STATS), paired)
                      + warning_lines(warnings))
    plots = write_plots(sweep_dir, rows)
    k_plot = write_recall_vs_k_plot(sweep_dir, rows, plan)
    plots += [k_plot] if k_plot else []
    return {"rows": rows, "counts": counts, "plots": plots, "paired": paired,
            "files": [str(sweep_dir / f) for f in (SUMMARY_CSV, SUMMARY_JSON, SUMMARY_MD)]}


def retrieval_warnings(sweep_dir: Path, rows: list[dict[str, Any]]) -> dict[str, str]:
    """Trials whose retrieved passages almost never hold an answer (``retrieval_warning`` in their
    results.json): their reader numbers measure the corpus, not the model."""
    found: dict[str, str] = {}
    for row in rows:
        results = RunFolder(sweep_dir / TRIALS / row["trial"]).results() if row["status"] == "ok" else None
        if results is not None and results.retrieval_warning:
            found[row["trial"]] = results.retrieval_warning
    return found


def warning_lines(warnings: dict[str, str]) -> str:
    """summary.md's marker lines for ``retrieval_warnings`` (nothing when there are none)."""
    if not warnings:
        return ""
    return "\n".join(["## Retrieval warnings", "", *(f"- **{trial}**: {text}" for trial, text in warnings.items())]) + "\n"


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return f"{value:.{digits}f}"
    return str(value)


def render_markdown(name: str, description: str | None, rows: list[dict[str, Any]],
                    stats: dict[str, Any] | None = None, paired: dict[str, Any] | None = None) -> str:
    """The summary table (plus the sweep's load/build counts) as Markdown."""
    header = ["trial", "model", "dataset", "mode", "retriever", "k", "n", "token recall [95% CI]", "EM", "F1",
              "match", "recall@k", "ex/s", "load s", "model RSS MB", "model GPU MB", "retr. RSS MB", "status"]
    lines = [f"# Sweep {name}", ""]
    if description:
        lines += [description, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        recall = ""
        if r["token_recall"] is not None:
            recall = f"{r['token_recall']:.3f} [{r['token_recall_ci_low']:.3f}, {r['token_recall_ci_high']:.3f}]"
        status = r["status"] if r["status"] not in ("failed", MISSING) else f"{r['status']}: {r['error']}"
        cells = [r["trial"], r["model"], r["dataset"], r["mode"], r["retriever"], r["k"], r["n_examples"], recall,
                 _fmt(r["exact_match"]), _fmt(r["f1"]), _fmt(r["match"]), _fmt(r["retrieval_recall"]),
                 _fmt(r["examples_per_second"], 2), _fmt(r["model_load_seconds"], 1), _fmt(r["model_peak_rss_mb"], 0),
                 _fmt(r["model_peak_gpu_mb"], 0), _fmt(r["retriever_peak_rss_mb"], 0), status]
        lines.append("| " + " | ".join(_fmt(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |")
    last = (stats or {}).get("last_run") or {}
    if last:
        lines += ["", f"Last run {last.get('run_id')}: {last.get('wall_seconds')} s wall, "
                  f"trials {last.get('trials')}, outcome {last.get('trials_outcome', {})}, "
                  f"model loads {last.get('model_loads')}, indexes built {last.get('indexes_built')}."]
    lines += ["", "recall@k is the share of questions whose context (retrieved or gold) contains a gold answer; "
              "memory is the peak RSS of the generator's process while it generated and of the shared "
              "retriever actor.", ""]
    if paired and (paired["pairs"] or paired["skipped"]):
        lines += render_paired(paired)
    return "\n".join(lines)


# --- paired comparisons ------------------------------------------------------------------------------


def _axes(row: dict[str, Any], plan: dict[str, Any]) -> dict[str, Any]:
    for trial in plan.get("trials", []):
        if trial.get("name") == row["trial"]:
            return trial.get("axes") or {}
    return {}


def _is_retrieval_axis(key: str) -> bool:
    return key.startswith(("retriever", "corpus"))


def _setting_label(row: dict[str, Any], axes: dict[str, Any]) -> str:
    """closed book, oracle, or the retrieval setting (retriever, k and any other retrieval axis)."""
    if row["mode"] == "no_context":
        return "closed book"
    if row["mode"] == "oracle_context":
        return "oracle"
    extra = [f"{k}={v}" for k, v in sorted(axes.items())
             if _is_retrieval_axis(k) and k not in ("retriever", "retriever.name", "retriever.k")]
    return " ".join([f"{row['retriever']} k={row['k']}", *extra])


def _groups(rows: list[dict[str, Any]], plan: dict[str, Any]) -> dict[tuple[Any, ...], list[dict[str, Any]]]:
    """Trials by model, dataset and the other grid settings that are not about retrieval, in row order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for row in rows:
        axes = _axes(row, plan)
        others = tuple(sorted((k, str(v)) for k, v in axes.items()
                              if k not in _IDENTITY_AXES and not _is_retrieval_axis(k)))
        groups.setdefault((row["model"], row["dataset"], others), []).append({**row, "_label": _setting_label(row, axes)})
    return groups


def paired_comparisons(sweep_dir: Path, rows: list[dict[str, Any]], plan: dict[str, Any]) -> dict[str, Any]:
    """``pairs``: per model and dataset, oracle vs closed book, each retrieval setting vs closed book
    and vs oracle, with every metric's paired difference; ``skipped``: a line per pair left out."""
    from slm_ray.errors import SlmRayError
    from slm_ray.evaluation.paired import compare_pairs, match_predictions

    predictions: dict[str, Any] = {}

    def rows_of(trial: str) -> list[dict[str, Any]]:
        if trial not in predictions:
            predictions[trial] = RunFolder(sweep_dir / TRIALS / trial).predictions()
        return predictions[trial]

    pairs: list[dict[str, Any]] = []
    skipped: list[str] = []
    for (model, dataset, others), members in _groups(rows, plan).items():
        closed = [r for r in members if r["mode"] == "no_context"][:1]
        oracle = [r for r in members if r["mode"] == "oracle_context"][:1]
        retrieved = [r for r in members if r["mode"] == "retriever_context"]
        wanted = [(a, b) for a in closed for b in oracle + retrieved] + [(a, b) for a in oracle for b in retrieved]
        where = ", ".join([str(model), str(dataset), *(f"{k}={v}" for k, v in others)])
        for a, b in wanted:
            what = f"{b['_label']} vs {a['_label']} ({where})"
            not_ok = [r for r in (a, b) if r["status"] != "ok"]
            if not_ok:
                skipped.append(f"{what}: trial {not_ok[0]['trial']} is {not_ok[0]['status']}")
                continue
            try:
                matched = match_predictions(rows_of(a["trial"]), rows_of(b["trial"]))
            except SlmRayError as exc:
                skipped.append(f"{what}: {exc}")
                continue
            if not matched["pairs"] or matched["different"]:
                why = "share no example" if not matched["pairs"] else "hold other questions under the same ids"
                skipped.append(f"{what}: the trials {why}")
                continue
            experiment = (RunFolder(sweep_dir / TRIALS / b["trial"]).config() or {}).get("experiment") or {}
            resamples, seed = int(experiment.get("bootstrap_resamples", 1000)), int(experiment.get("seed", 0))
            compared = compare_pairs(matched["pairs"], n_resamples=resamples, seed=seed)
            pairs.append({"model": model, "dataset": dataset, "settings": dict(others), "a": a["trial"],
                          "b": b["trial"], "label_a": a["_label"], "label_b": b["_label"],
                          "n_matched": len(matched["pairs"]), "only_a": len(matched["only_a"]),
                          "only_b": len(matched["only_b"]), "bootstrap": {"resamples": resamples, "seed": seed},
                          "metrics": compared["metrics"]})
    return {"pairs": pairs, "skipped": skipped}


def render_paired(paired: dict[str, Any]) -> list[str]:
    """The paired table of summary.md: token recall and match, B - A on the same questions."""
    lines = ["## Paired comparisons (same questions)", "",
             "B - A on the questions both trials answered, with a 95% paired-bootstrap interval; "
             "+/- counts the questions B scored higher / lower on; McNemar's exact p for match.", ""]
    header = ["model", "dataset", "B vs A", "n", "token recall A -> B", "Δ token recall [95% CI]", "+/-",
              "match A -> B", "Δ match [95% CI]", "+/-", "McNemar p"]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for pair in paired["pairs"]:
        cells = [pair["model"], pair["dataset"]
                 + "".join(f" {k}={v}" for k, v in pair["settings"].items()),
                 f"{pair['label_b']} vs {pair['label_a']}", pair["n_matched"]]
        for metric in PAIRED_TABLE_METRICS:
            s = pair["metrics"].get(metric)
            if s is None:
                cells += ["", "", ""]
                continue
            cells += [f"{s['mean_a']:.3f} -> {s['mean_b']:.3f}",
                      f"{s['diff']:+.3f} [{s['ci_low']:+.3f}, {s['ci_high']:+.3f}]", f"{s['helped']}/{s['hurt']}"]
        p_value = (pair["metrics"].get("match") or {}).get("mcnemar_p")
        cells.append("" if p_value is None else (f"{p_value:.2g}" if p_value >= 1e-4 else "<1e-4"))
        lines.append("| " + " | ".join(_fmt(c).replace("|", "\\|") for c in cells) + " |")
    if paired["skipped"]:
        lines += ["", "Pairs skipped:"] + [f"- {line}" for line in paired["skipped"]]
    return lines + [""]


def write_recall_vs_k_plot(sweep_dir: Path, rows: list[dict[str, Any]], plan: dict[str, Any]) -> str | None:
    """Token recall (95% CI) against retriever.k, with recall@k beside it, for every model, dataset
    and retriever whose finished trials cover more than one k; None when the sweep varies no k."""
    series: dict[str, list[dict[str, Any]]] = {}
    for (model, dataset, others), members in _groups(rows, plan).items():
        for r in members:
            if r["mode"] == "retriever_context" and r["status"] == "ok" and r["k"] is not None:
                name = " ".join([str(model), str(r["retriever"]), *(f"{k}={v}" for k, v in others)])
                datasets = {x["dataset"] for x in rows}
                series.setdefault(f"{dataset}: {name}" if len(datasets) > 1 else name, []).append(r)
    series = {name: sorted(points, key=lambda r: r["k"]) for name, points in series.items()
              if len({r["k"] for r in points}) > 1}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    for name, points in series.items():
        ks = [r["k"] for r in points]
        recall = [r["token_recall"] for r in points]
        low = [max(0.0, r["token_recall"] - (r["token_recall_ci_low"] if r["token_recall_ci_low"] is not None
                                             else r["token_recall"])) for r in points]
        high = [max(0.0, (r["token_recall_ci_high"] if r["token_recall_ci_high"] is not None
                          else r["token_recall"]) - r["token_recall"]) for r in points]
        left.errorbar(ks, recall, yerr=[low, high], marker="o", capsize=3, label=name)
        right.plot(ks, [r["retrieval_recall"] for r in points], marker="o", label=name)
    for ax, ylabel, title in ((left, "token recall (95% bootstrap CI)", "Answer token recall against k"),
                              (right, "recall@k", "Retrieval recall@k (a gold answer in the top k)")):
        ax.set_xlabel("retriever.k")
        ax.set_ylabel(ylabel)
        ax.set_ylim(0, 1.05)
        ax.set_title(title)
        ax.legend(fontsize=7)
    ks = sorted({r["k"] for points in series.values() for r in points})
    left.set_xticks(ks)
    right.set_xticks(ks)
    return _save(fig, sweep_dir / RECALL_VS_K_PLOT)


def write_plots(sweep_dir: Path, rows: list[dict[str, Any]]) -> list[str]:
    """Token recall by model and mode (with 95% CIs), peak memory by model, throughput."""
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(dict.fromkeys(r["model"] for r in ok))
    written = []

    def config_label(r: dict[str, Any]) -> str:
        label = r["mode"]
        if r["mode"] == "retriever_context":
            label += f" {r['retriever']}-k{r['k']}"
        datasets = {x["dataset"] for x in ok}
        return f"{r['dataset']}: {label}" if len(datasets) > 1 else label

    def grouped(ax: Any, value_key: str, err: bool) -> None:
        labels = list(dict.fromkeys(config_label(r) for r in ok))
        width = 0.8 / max(1, len(labels))
        for j, label in enumerate(labels):
            xs, ys, lo, hi = [], [], [], []
            for i, model in enumerate(models):
                match = [r for r in ok if r["model"] == model and config_label(r) == label and r[value_key] is not None]
                if not match:
                    continue
                r = match[0]
                xs.append(i - 0.4 + width * (j + 0.5))
                ys.append(r[value_key])
                if err:
                    low = r["token_recall_ci_low"] if r["token_recall_ci_low"] is not None else r[value_key]
                    high = r["token_recall_ci_high"] if r["token_recall_ci_high"] is not None else r[value_key]
                    lo.append(max(0.0, r[value_key] - low))
                    hi.append(max(0.0, high - r[value_key]))
            if xs:
                ax.bar(xs, ys, width=width, label=label, yerr=[lo, hi] if err else None, capsize=3 if err else 0)
        ax.set_xticks(range(len(models)))
        ax.set_xticklabels(models, rotation=20, ha="right")
        ax.legend(fontsize=7)

    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) + 3), 4.5))
    grouped(ax, "token_recall", err=True)
    ax.set_ylabel("token recall (95% bootstrap CI)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Token recall by model and mode")
    written.append(_save(fig, sweep_dir / "token_recall.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(models) + 3), 4.5))
    series = [("model peak RSS", "model_peak_rss_mb"), ("model peak GPU", "model_peak_gpu_mb")]
    retrievers = list(dict.fromkeys((r["retriever"], r["retriever_peak_rss_mb"]) for r in ok
                                    if r["retriever"] and r["retriever_peak_rss_mb"] is not None))
    width = 0.8 / len(series)
    for j, (label, key) in enumerate(series):
        values = [max((r[key] for r in ok if r["model"] == m and r[key] is not None), default=0.0) for m in models]
        if any(values):
            ax.bar([i - 0.4 + width * (j + 0.5) for i in range(len(models))], values, width=width, label=label)
    for n, (name, peak) in enumerate(dict(retrievers).items()):
        ax.bar(len(models) + n, peak, width=0.5, label=f"retriever {name} (actor)", color="grey")
    ticks = models + [f"retriever\n{name}" for name in dict(retrievers)]
    ax.set_xticks(range(len(ticks)))
    ax.set_xticklabels(ticks, rotation=20, ha="right")
    ax.set_ylabel("MB")
    ax.set_title("Peak memory by model (and shared retriever actors)")
    ax.legend(fontsize=7)
    written.append(_save(fig, sweep_dir / "memory.png"))

    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(models) + 3), 4.5))
    grouped(ax, "examples_per_second", err=False)
    ax.set_ylabel("examples / s (generation)")
    ax.set_title("Throughput by model and mode")
    written.append(_save(fig, sweep_dir / "throughput.png"))
    return written


def _save(fig: Any, path: Path) -> str:
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return str(path)
