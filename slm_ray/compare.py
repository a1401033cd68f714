"""Paired comparison of two finished runs: did B answer the same questions better than A?

    slm-ray compare outputs/smollm2_135m_gguf_nq_no_context outputs/smollm2_135m_gguf_nq_oracle_context
    slm-ray compare outputs/sweeps/smoke tiny_llama-nq-no_context tiny_llama-nq-oracle_context

Options: --out DIR (where compare.md, compare.json and compare.png go; default: the current
directory), --resamples N (bootstrap resamples, default 1000), --seed S (default 0), --debug.

Predictions are matched by example id. For every metric stored in both runs' predictions.jsonl it
prints the mean of A, the mean of B, the mean paired difference B - A with a 95% paired-bootstrap
interval, and how many questions B scored higher (helped), lower (hurt) or the same on; for 0/1
metrics (exact_match, match, retrieval_recall) also the exact McNemar p-value. Runs that share only
some questions are compared on those, with a warning naming the counts; runs that share none, or
whose shared ids hold different questions, are refused. Both runs must be finished (results.json).

Existing compare.md / compare.json / compare.png in the output folder are replaced only when they
are a previous comparison's (compare.json says so); any other file of those names is refused.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Sequence

from slm_ray.cli import run_cli
from slm_ray.errors import CompareError
from slm_ray.store.sweep_folder import SweepFolder, is_sweep_folder

OUTPUT_FILES = ("compare.md", "compare.json", "compare.png")
KIND = "slm_ray.compare"  # marks compare.json as ours: a later comparison may replace the three files
OPTIONS = ("--out", "--resamples", "--seed")
MAX_NAMES = 8


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options, rest, problem = _split_options(args)

    def body(positionals: list[str], print_config: bool) -> int:
        if problem:
            raise CompareError(problem)
        return _compare_cli(positionals, options)

    return run_cli(body, __doc__ or "", rest)


def _split_options(args: list[str]) -> tuple[dict[str, str], list[str], str | None]:
    """(our options, what run_cli parses, the first problem): run_cli knows only --help and --debug."""
    options: dict[str, str] = {}
    rest: list[str] = []
    problem = None
    i = 0
    while i < len(args):
        arg = args[i]
        name, _, inline = arg.partition("=")
        if name in OPTIONS:
            if "=" in arg:
                options[name] = inline
            elif i + 1 < len(args):
                i += 1
                options[name] = args[i]
            else:
                problem = problem or f"{name} needs a value (e.g. {name} {_EXAMPLES[name]})"
        elif arg in ("-h", "--help", "--debug") or not arg.startswith("-"):
            rest.append(arg)
        else:
            problem = problem or f"unknown option {arg!r} (valid: {', '.join(OPTIONS)}, --debug, --help)"
        i += 1
    return options, rest, problem


_EXAMPLES = {"--out": "compare_out", "--resamples": "1000", "--seed": "0"}


def _int_option(options: dict[str, str], name: str, default: int, minimum: int | None) -> int:
    raw = options.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        valid = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise CompareError(f"{name}={raw!r} is not valid (expected {valid})")
    return value


def _compare_cli(positionals: list[str], options: dict[str, str]) -> int:
    resamples = _int_option(options, "--resamples", 1000, 1)
    seed = _int_option(options, "--seed", 0, None)
    (name_a, folder_a), (name_b, folder_b) = resolve_runs(positionals)
    if options.get("--out") == "":
        raise CompareError("--out is empty (give a folder, e.g. --out compare_out)")
    out = Path(options.get("--out", "."))
    check_output_folder(out)
    report = compare_runs(folder_a, folder_b, name_a, name_b, n_resamples=resamples, seed=seed)
    if report["only_a"] or report["only_b"]:
        print(f"warning: {report['warning']}", file=sys.stderr)
    written = write_outputs(out, report)
    print(render_markdown(report))
    print(f"wrote {', '.join(written)}")
    return 0


# --- which runs ------------------------------------------------------------------------------------


def resolve_runs(positionals: list[str]) -> tuple[tuple[str, Path], tuple[str, Path]]:
    """(name, folder) of A and B, from two run folders or a sweep folder and two trial names; each
    checked to be a finished run."""
    if len(positionals) == 2:
        runs = [(Path(p).name or p, Path(p)) for p in positionals]
    elif len(positionals) == 3:
        sweep = Path(positionals[0])
        _check_sweep(sweep)
        runs = [(name, _trial_folder(sweep, name)) for name in positionals[1:]]
    else:
        raise CompareError(f"give two run folders (A B) or a sweep folder and two trial names (SWEEP A B), "
                           f"got {len(positionals)} argument(s): slm-ray compare --help")
    for name, folder in runs:
        check_finished(folder)
    if runs[0][1].resolve() == runs[1][1].resolve():
        raise CompareError(f"A and B are the same run ({runs[0][1]}): give two different runs")
    return runs[0], runs[1]


def _check_sweep(sweep: Path) -> None:
    if not sweep.is_dir():
        raise CompareError(f"sweep folder not found: {sweep}")
    if not is_sweep_folder(sweep):
        raise CompareError(f"{sweep} is not a sweep folder (no sweep.json and no trials/): with three arguments "
                           "the first is a sweep folder, e.g. outputs/sweeps/<name>")


def _trial_names(sweep: Path) -> list[str]:
    from slm_ray.store.run_folder import REPLACED_MARK

    planned = [t.get("name") for t in SweepFolder(sweep).read_plan().get("trials", []) if t.get("name")]
    trials = SweepFolder(sweep).trials_dir
    found = sorted(p.name for p in trials.iterdir() if p.is_dir() and REPLACED_MARK not in p.name) if trials.is_dir() else []
    return list(dict.fromkeys(planned + found))


def _trial_folder(sweep: Path, name: str) -> Path:
    names = _trial_names(sweep)
    if name not in names or "/" in name or name in (".", ".."):
        shown = ", ".join(names[:MAX_NAMES]) + (f", ... ({len(names)} in all)" if len(names) > MAX_NAMES else "")
        raise CompareError(f"no trial {name!r} in {sweep} (valid: {shown or 'none: the sweep has no trials yet'})")
    folder = SweepFolder(sweep).trial_dir(name)
    record = SweepFolder(sweep).read_trial_record(name)
    if record.get("status") == "failed":  # its last attempt failed, whatever files are in its folder
        raise CompareError(f"trial {name!r} failed ({record.get('error')}): nothing to compare; run the sweep again")
    if not folder.is_dir():
        raise CompareError(f"trial {name!r} of {sweep} has not run yet (pending): run the sweep first")
    return folder


def check_finished(folder: Path) -> None:
    """A finished run: results.json readable; otherwise one line saying what the folder is."""
    from slm_ray.store.run_folder import PREDICTIONS, RESULTS, RunFolder

    run = RunFolder(folder)
    if not folder.is_dir():
        raise CompareError(f"run folder not found: {folder}")
    if run.results() is not None:
        return
    if run.has_answers():
        raise CompareError(f"{folder} is a run that is not finished ({run.count_predictions()} predictions, no "
                           f"{RESULTS}): run the same command again to complete it")
    if (folder / RESULTS).exists():
        raise CompareError(f"{folder}/{RESULTS} is unreadable or not a run's results")
    if is_sweep_folder(folder):
        raise CompareError(f"{folder} is a sweep folder, not a run: give the sweep and two trial names "
                           f"(slm-ray compare {folder} TRIAL_A TRIAL_B)")
    raise CompareError(f"{folder} is not a run folder (no {RESULTS} and no {PREDICTIONS})")


# --- the comparison --------------------------------------------------------------------------------


def compare_runs(folder_a: Path, folder_b: Path, name_a: str, name_b: str, n_resamples: int = 1000,
                 seed: int = 0) -> dict[str, Any]:
    """The paired comparison of two finished runs as one JSON-ready dict (refuses unmatched runs)."""
    from slm_ray.evaluation.paired import compare_pairs, match_predictions
    from slm_ray.store.run_folder import RunFolder

    runs = {"a": RunFolder(folder_a), "b": RunFolder(folder_b)}
    rows = {key: run.predictions() for key, run in runs.items()}
    matched = match_predictions(rows["a"], rows["b"])
    if not matched["pairs"]:
        raise CompareError(f"{folder_a} ({len(rows['a'])} examples, e.g. {_first(rows['a'])}) and {folder_b} "
                           f"({len(rows['b'])}, e.g. {_first(rows['b'])}) share no example id: nothing to compare "
                           "(same dataset and limit?)")
    if matched["different"]:
        first = matched["different"][0]
        raise CompareError(f"example {first!r} has another question or other gold answers in {folder_a} than in "
                           f"{folder_b} ({len(matched['different'])} such id(s)): the runs used different data")
    compared = compare_pairs(matched["pairs"], n_resamples=n_resamples, seed=seed)
    report: dict[str, Any] = {
        "kind": KIND,
        "a": _describe(name_a, folder_a, runs["a"], len(rows["a"])),
        "b": _describe(name_b, folder_b, runs["b"], len(rows["b"])),
        "n_matched": len(matched["pairs"]),
        "only_a": len(matched["only_a"]),
        "only_b": len(matched["only_b"]),
        "bootstrap": {"resamples": n_resamples, "seed": seed, "confidence": 0.95},
        **compared,
        "warning": None,
    }
    if report["only_a"] or report["only_b"]:
        report["warning"] = (f"compared on the {report['n_matched']} examples both runs answered; "
                             f"{report['only_a']} of A's {len(rows['a'])} and {report['only_b']} of B's "
                             f"{len(rows['b'])} have no partner and are left out")
    return report


def _first(rows: list[dict[str, Any]]) -> str:
    return repr(rows[0]["id"]) if rows else "none"


def _describe(name: str, folder: Path, run: Any, n_rows: int) -> dict[str, Any]:
    results = run.results()
    return {"name": name, "folder": str(folder), "n_examples": n_rows, "model": results.model,
            "dataset": results.dataset, "mode": results.experiment_mode, "retriever": results.retriever,
            "k": results.k}


def label(run: dict[str, Any]) -> str:
    """What a run is, in a few words (model, mode, retriever and k)."""
    text = f"{run['model']} {run['mode']}"
    return text + (f" {run['retriever']} k={run['k']}" if run.get("retriever") and run["mode"] == "retriever_context" else "")


def fmt_diff(stats: dict[str, Any]) -> str:
    return f"{stats['diff']:+.3f} [{stats['ci_low']:+.3f}, {stats['ci_high']:+.3f}]"


def fmt_p(p_value: float | None) -> str:
    if p_value is None:
        return ""
    return f"{p_value:.2g}" if p_value >= 1e-4 else "<1e-4"


def render_markdown(report: dict[str, Any]) -> str:
    a, b = report["a"], report["b"]
    lines = ["# Paired comparison", "",
             f"- A: `{a['name']}` ({label(a)}, {a['folder']})",
             f"- B: `{b['name']}` ({label(b)}, {b['folder']})",
             f"- {report['n_matched']} examples answered by both, matched by id; B - A with a 95% paired-bootstrap "
             f"interval ({report['bootstrap']['resamples']} resamples, seed {report['bootstrap']['seed']})", ""]
    if report.get("warning"):
        lines += [f"**Warning:** {report['warning']}.", ""]
    header = ["metric", "A", "B", "B - A [95% CI]", "helped", "hurt", "unchanged", "McNemar p"]
    lines += ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for metric, s in report["metrics"].items():
        lines.append(f"| {metric} | {s['mean_a']:.3f} | {s['mean_b']:.3f} | {fmt_diff(s)} | {s['helped']} | "
                     f"{s['hurt']} | {s['unchanged']} | {fmt_p(s['mcnemar_p'])} |")
    for key, run in (("only_in_a", "A"), ("only_in_b", "B")):
        if report.get(key):
            lines += ["", f"Only in {run}'s predictions (not paired): {', '.join(report[key])}."]
    lines += ["", "helped / hurt: questions where B scored higher / lower than A. McNemar's exact test (0/1 metrics) "
              "asks whether the questions that changed went one way more often than chance.", ""]
    return "\n".join(lines)


# --- files -----------------------------------------------------------------------------------------


def check_output_folder(out: Path) -> None:
    """Refuse before any work when the outputs would replace a file that is not a previous comparison,
    or land in a run folder (a run folder holds only a run's files)."""
    from slm_ray.store.io import read_json
    from slm_ray.store.run_folder import PREDICTIONS, RESULTS

    if out.exists() and not out.is_dir():
        raise CompareError(f"--out {out} is a file, not a folder: give a folder")
    if (out / RESULTS).exists() or (out / PREDICTIONS).exists():
        raise CompareError(f"--out {out} is a run folder, which may hold only the run's files: choose another folder")
    previous = read_json(out / "compare.json")
    ours = isinstance(previous, dict) and previous.get("kind") == KIND
    for name in OUTPUT_FILES:
        if (out / name).exists() and not ours:
            raise CompareError(f"{out / name} exists and is not a previous comparison's output: move it, or choose "
                               "another folder with --out")


def write_outputs(out: Path, report: dict[str, Any]) -> list[str]:
    """compare.png, compare.json, compare.md, each written whole (a temporary file renamed)."""
    from slm_ray.store.io import atomic_write_json, atomic_write_text

    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CompareError(f"cannot create --out {out}: {exc.strerror or type(exc).__name__} (choose another folder)") from None
    plot = out / "compare.png"
    save_plot(report, plot)
    atomic_write_json(out / "compare.json", report)
    atomic_write_text(out / "compare.md", render_markdown(report))
    return [str(out / name) for name in OUTPUT_FILES]


def save_plot(report: dict[str, Any], path: Path) -> None:
    """Each metric's paired difference B - A with its 95% interval, against zero."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = list(report["metrics"].items())
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.5 * len(metrics)))
    ys = list(range(len(metrics)))[::-1]
    diffs = [s["diff"] for _, s in metrics]
    errors = [[s["diff"] - s["ci_low"] for _, s in metrics], [s["ci_high"] - s["diff"] for _, s in metrics]]
    ax.errorbar(diffs, ys, xerr=errors, fmt="o", capsize=4)
    ax.axvline(0.0, color="grey", linewidth=1, linestyle="--")
    ax.set_yticks(ys)
    ax.set_yticklabels([f"{m} ({s['helped']}+/{s['hurt']}-)" for m, s in metrics])
    ax.set_xlabel("B - A (mean paired difference, 95% bootstrap CI)")
    ax.set_title(f"B: {label(report['b'])}\nvs A: {label(report['a'])} (n={report['n_matched']})", fontsize=9)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.tight_layout()
        fig.savefig(tmp, dpi=110)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


if __name__ == "__main__":
    sys.exit(main())
