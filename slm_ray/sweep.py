"""Run a sweep: every trial of a sweep file, distributed with Ray (Tune drives the trials).

    slm-ray sweep --list                                # the shipped sweeps
    slm-ray sweep size_comparison                       # a shipped sweep, by name
    slm-ray sweep size_comparison dataset.limit=500 --name sizes_500
    slm-ray sweep smoke                                 # offline, CPU, a few minutes
    slm-ray sweep my_sweep.yaml --address auto          # a sweep file of yours, on a running Ray cluster
    slm-ray sweep --cfg retriever_comparison            # print the trials and exit

Arguments: the sweep (a file, or the name of a shipped one), then Hydra overrides applied to every
trial (key=value).
Options: --name NAME (folder and ClearML project, default the file's name), --address ADDR (an
existing Ray cluster; default: start a local one), --dashboard / --no-dashboard (whether that local
Ray runs its dashboard; default: on with 4 or more CPUs, where it costs little), --cfg (print the
plan only; --cfg hydra|all adds Hydra's own config), --config-dir DIR (a folder of your own
options, added to conf/), -m/--multirun (accepted: a sweep is always a multirun), --debug.

Every trial is composed and validated before Ray starts; a bad sweep file exits 2 and writes nothing.
Results go to <experiment.output_dir>/sweeps/<name>/: trials/<trial>/ (one experiment each),
summary.csv/json/md, plots, sweep_stats.json (model loads, indexes built) and ray/ (Tune's results).
Running the same command again resumes: complete trials are skipped, interrupted ones continue.
Exit code 0 when every trial succeeded, 1 when some failed (see summary.md), 2 for a bad sweep.
"""

from __future__ import annotations

import sys
from typing import Sequence

from slm_ray.cli import USAGE_EXIT, run_cli
from slm_ray.preflight import check_sweep

VALUE_FLAGS = ("--name", "--address")


def split_flags(args: list[str]) -> tuple[dict[str, str], list[str]]:
    """Take ``--name X`` / ``--name=X`` / ``--address X`` out of the arguments (run_cli knows only its own)."""
    flags: dict[str, str] = {}
    rest: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        flag, eq, value = arg.partition("=")
        if flag in VALUE_FLAGS:
            if not eq:
                if i + 1 >= len(args) or args[i + 1].startswith("-"):
                    raise ValueError(f"{flag} needs a value, e.g. {flag} {'sizes_500' if flag == '--name' else 'auto'}")
                value = args[i + 1]
                i += 1
            if not value:
                raise ValueError(f"{flag} needs a value")
            flags[flag.lstrip("-")] = value
        else:
            rest.append(arg)
        i += 1
    return flags, rest


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        flags, rest = split_flags(args)
        for switch in ("--dashboard", "--no-dashboard"):
            if switch in rest:
                rest = [a for a in rest if a != switch]
                flags[switch.lstrip("-")] = "1"
        if "dashboard" in flags and "no-dashboard" in flags:
            raise ValueError("give --dashboard or --no-dashboard, not both")
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return USAGE_EXIT
    if "--list" in rest:
        if rest != ["--list"]:
            print("error: --list takes nothing else (it lists the shipped sweeps)", file=sys.stderr)
            return USAGE_EXIT
        return list_sweeps()
    return run_cli(lambda overrides, print_config: _sweep(overrides, print_config, flags), __doc__ or "", rest,
                   hydra_flags=True)


def list_sweeps() -> int:
    """One line per shipped sweep: its name (what ``slm-ray sweep NAME`` takes) and description."""
    import yaml

    from slm_ray.sweeps.spec import shipped_sweeps

    shipped = shipped_sweeps()
    width = max(map(len, shipped))
    for name, path in shipped.items():
        description = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("description") or ""
        print(f"{name:<{width}}  {description}")
    return 0


def _sweep(arguments: list[str], print_config: str | None, flags: dict[str, str]) -> int:
    from slm_ray.data.storage import load_env_file
    from slm_ray.sweeps.spec import SweepError, load_sweep

    if not arguments or "=" in arguments[0]:
        raise SweepError("give the sweep first: slm-ray sweep SWEEP.yaml|NAME [key=value ...] "
                         "[--name NAME] [--address ADDR] (shipped sweeps: slm-ray sweep --list)")
    load_env_file()
    plan = load_sweep(arguments[0], arguments[1:], name=flags.get("name"))
    if print_config:
        if print_config in ("hydra", "all"):
            from omegaconf import OmegaConf

            from slm_ray.composition import compose_hydra

            print("# hydra\n" + OmegaConf.to_yaml(compose_hydra([*plan.overrides, *plan.cli_overrides])).rstrip())
        if print_config in ("job", "all"):
            print(plan.render())
        return 0
    check_sweep(plan, flags.get("address"))  # models, devices, the cluster: refused before Ray starts
    from slm_ray.sweeps.engine import run_sweep

    dashboard = True if "dashboard" in flags else False if "no-dashboard" in flags else None
    record = run_sweep(plan, address=flags.get("address"), dashboard=dashboard)
    counts = record.get("summary", {})
    if counts.get("failed"):
        print(f"{counts['failed']} trial(s) failed: see {plan.sweep_dir / 'summary.md'}", file=sys.stderr)
        return 1
    if counts.get("pending") or counts.get("incomplete"):
        print("some trials did not finish: run the same command again to resume", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
