"""Download every model, dataset and encoder a plan needs, so that later runs find them locally.

    slm-ray fetch size_comparison                        # every trial of a sweep (a file or a shipped name)
    slm-ray fetch model=qwen3_0.6b,qwen3_1.7b dataset=simpleqa   # runs, key=a,b expanded as slm-ray run does
    slm-ray fetch model=smollm2_360m experiment_mode=retriever_context retriever=dense \\
        retriever.encoder=all-mpnet-base-v2             # a hub encoder: sentence-transformers/all-mpnet-base-v2
    slm-ray fetch dataset=file dataset.path=s3://my-bucket/qa.jsonl
    slm-ray fetch --config-dir my_conf model=my_model   # your own options, as with slm-ray run
    HF_HUB_OFFLINE=1 slm-ray run model=smollm2_360m     # later, on the prepared machine: no network

Arguments: a sweep file (a .yaml/.yml path) followed by overrides, as ``slm-ray sweep`` takes them,
or overrides alone, as ``slm-ray run`` takes them. Prepare a cluster node or an offline machine
once (or fetch on one machine and copy the caches): each item is fetched once, however many trials
use it.

- hub models (model.source=hub): the files from_pretrained reads (config, tokenizer, chat template,
  safetensors weights; not ONNX, GGUF or other frameworks' copies) into the Hugging Face cache
  (HF_HUB_CACHE, else HF_HOME/hub); a model already cached is not asked for again.
- packaged models, datasets and encoders: checked to be installed; local folders and files:
  checked to exist; tiny models are built by the run itself.
- s3:// datasets and corpora: into <experiment.cache_dir>/datasets, as a run fetches them (an
  unchanged cached object is reused). A run still asks the bucket for the object's ETag.
- dense encoders (retriever.encoder): builtin:... is packaged; any other name is a hub repo (a name
  without '/' is sentence-transformers/<name>), into the same cache (or SENTENCE_TRANSFORMERS_HOME).

One line per item (what, from where, what happened), then a summary. A failed item does not stop
the others; each failure is one ``error:`` line at the end and the exit code is 1. Exit code 2: bad
arguments (an unknown sweep file or override), or HF_HUB_OFFLINE=1 while something must come from
the hub. Options: --config-dir DIR, --cfg job|hydra|all (print the configs and exit), -m (accepted),
--debug, --help. (``python -m slm_ray.fetch`` is the same.)
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from slm_ray.cli import one_line, run_cli

PACKAGED = "packaged"
LOCAL = "local"
DOWNLOADED = "downloaded"
CACHED = "cached"
NOTHING = "nothing"


class ItemError(Exception):
    """One item cannot be fetched; the message is its one-line reason."""


@dataclass
class Item:
    """One thing a plan needs: ``what`` (e.g. model=qwen3_0.6b), ``origin`` (where it comes from)
    and ``fetch``, which returns (outcome kind, text) or raises ItemError."""

    what: str
    origin: str
    fetch: Callable[[], tuple[str, str]]
    hub_repo: tuple[str, Path, bool] | None = None  # (repo, cache, encoder) when it comes from the hub


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(_fetch, __doc__ or "", argv, hydra_flags=True)


def _fetch(arguments: list[str], print_config: str | None) -> int:
    from slm_ray.data.storage import load_env_file

    load_env_file()
    configs = _configs(arguments, print_config)
    if configs is None:
        return 0
    items = plan_items(configs)
    _refuse_offline(items)
    return fetch_items(items)


def _configs(arguments: list[str], print_config: str | None) -> list[Any] | None:
    """The configs of a sweep (first argument ending .yaml/.yml, or a shipped sweep's name) or of a
    run's overrides; None when ``--cfg`` printed them."""
    from slm_ray.sweeps.spec import load_sweep, shipped_sweeps

    if arguments and "=" not in arguments[0] and (arguments[0].endswith((".yaml", ".yml"))
                                                  or arguments[0] in shipped_sweeps()):
        plan = load_sweep(arguments[0], arguments[1:])
        if print_config:
            print(plan.render())
            return None
        return [trial.config for trial in plan.trials]
    from slm_ray.composition import compose_jobs

    return compose_jobs(arguments, print_config)


def plan_items(configs: Sequence[Any]) -> list[Item]:
    """The distinct items of ``configs``, in the order first used. Corpus and encoder count only
    for retriever_context, the one mode that reads them."""
    from slm_ray import hub_fetch
    from slm_ray.preflight.models import hub_cache_dir, hub_endpoint

    cache, endpoint = hub_cache_dir(), hub_endpoint()
    items: dict[tuple[str, ...], Item] = {}

    def add(key: tuple[str, ...], build: Callable[[], Item]) -> None:
        if key not in items:
            items[key] = build()

    for cfg in configs:
        model, data_cache = cfg.model, Path(cfg.experiment.cache_dir) / "datasets"
        add(("model", model.source, model.path, str(model.gguf_file)), lambda: _model_item(model, cache, endpoint))
        sources = [(f"dataset={cfg.dataset.name}", cfg.dataset.path)]
        if cfg.experiment_mode == "retriever_context":
            sources.append((f"corpus={cfg.corpus.name}", cfg.corpus.path))
        for what, path in sources:
            add(_data_key(what, path, data_cache), lambda: _data_item(what, path, data_cache))
        dense = {"dense": cfg.retriever, "hybrid": getattr(cfg.retriever, "dense", None)}.get(cfg.retriever.type)
        if cfg.experiment_mode == "retriever_context" and dense is not None:  # hybrid: its dense part's encoder
            encoder = dense.encoder
            add(("encoder", encoder), lambda: _encoder_item(encoder, hub_fetch.encoder_cache_dir(cache), endpoint))
    return list(items.values())


def size_text(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _data_key(what: str, path: str, data_cache: Path) -> tuple[str, ...]:
    """A file is one item whichever option names it; ``builtin`` is a different file per option."""
    return ("data", what if path == "builtin" else path, str(data_cache))


def _hub_item(what: str, repo: str, cache: Path, endpoint: str, encoder: bool) -> Item:
    from slm_ray import hub_fetch

    def fetch() -> tuple[str, str]:
        if hub_fetch.is_cached(repo, cache, encoder):
            return CACHED, f"already cached in {cache}"
        try:
            got = hub_fetch.download(repo, cache, endpoint, encoder)
        except hub_fetch.HubFetchError as exc:
            raise ItemError(str(exc)) from None
        if not got.files:
            return CACHED, f"already cached in {cache}"
        return DOWNLOADED, f"downloaded {got.files} file{'s' * (got.files != 1)}, {size_text(got.size)} into {cache}"

    return Item(what, f"{repo} from {endpoint}", fetch, hub_repo=(repo, cache, encoder))


def _model_item(model: Any, cache: Path, endpoint: str) -> Item:
    what = f"model={model.name}"
    if model.source == "tiny":
        return Item(what, "tiny (random weights)", lambda: (NOTHING, "built by the run itself: nothing to fetch"))
    if model.source == "gguf_package":
        def packaged() -> tuple[str, str]:
            from slm_ray.errors import ConfigError
            from slm_ray.generation.sources import packaged_gguf_folder

            try:
                packaged_gguf_folder(model.path, model.gguf_file)
            except ConfigError as exc:
                raise ItemError(str(exc)) from None
            return PACKAGED, "packaged, installed: nothing to fetch"

        return Item(what, f"{model.gguf_file} in the package {model.path}", packaged)
    folder = Path(model.path).expanduser()
    if model.source == "local" or (folder / "config.json").is_file():  # a hub path that is a folder loads as it is
        return Item(what, f"the folder {model.path}", lambda: _local_folder(folder, "config.json", "model.path"))
    return _hub_item(what, model.path, cache, endpoint, encoder=False)


def _local_folder(folder: Path, needed: str, key: str) -> tuple[str, str]:
    if not folder.is_dir():
        raise ItemError(f"{key}={str(folder)!r}: folder not found")
    if not (folder / needed).is_file():
        raise ItemError(f"{key}={str(folder)!r} has no {needed} (expected a model folder, as save_pretrained writes)")
    return LOCAL, "a local folder: nothing to fetch"


def _data_item(what: str, path: str, data_cache: Path) -> Item:
    from slm_ray.data.storage import is_remote

    if path == "builtin":
        return Item(what, "builtin", lambda: (PACKAGED, "packaged with slm-ray: nothing to fetch"))
    if is_remote(path):
        return Item(what, path, lambda: _s3_object(path, data_cache))

    def local() -> tuple[str, str]:
        if not Path(path).expanduser().exists():
            raise ItemError(f"{path}: file not found (give an existing file or an s3:// URI)")
        return LOCAL, "a local file: nothing to fetch"

    return Item(what, path, local)


def _s3_object(uri: str, data_cache: Path) -> tuple[str, str]:
    """Fetch as a run does (slm_ray.data.storage: ETag-keyed, atomic); tell a download from a reuse
    by whether the file it returns was there, unchanged, before."""
    from slm_ray.data.storage import resolve_path
    from slm_ray.errors import SlmRayError

    def files() -> dict[Path, int]:
        return {p: p.stat().st_mtime_ns for p in data_cache.rglob("*") if p.is_file()} if data_cache.is_dir() else {}

    before = files()
    try:
        local = resolve_path(uri, data_cache)
    except SlmRayError as exc:
        raise ItemError(str(exc)) from None
    if before.get(local) == local.stat().st_mtime_ns:
        return CACHED, f"already cached at {local}"
    return DOWNLOADED, f"downloaded 1 file, {size_text(local.stat().st_size)} to {local}"


def _encoder_item(name: str, cache: Path, endpoint: str) -> Item:
    what = f"retriever.encoder={name}"
    if name.startswith("builtin:"):
        def packaged() -> tuple[str, str]:
            from slm_ray.errors import ConfigError
            from slm_ray.retrieval.dense import resolve_encoder

            try:
                resolve_encoder(name)
            except ConfigError as exc:
                raise ItemError(str(exc)) from None
            return PACKAGED, "packaged, installed: nothing to fetch"

        return Item(what, "a packaged encoder", packaged)
    folder = Path(name).expanduser()
    if folder.is_dir():  # sentence-transformers loads a folder as it is
        return Item(what, f"the folder {name}", lambda: (LOCAL, "a local folder: nothing to fetch"))
    from slm_ray import hub_fetch

    return _hub_item(what, hub_fetch.encoder_repo(name), cache, endpoint, encoder=True)


def _refuse_offline(items: list[Item]) -> None:
    """HF_HUB_OFFLINE forbids the downloads fetch exists for: refuse unless the hub items are cached."""
    from slm_ray.preflight.models import hub_offline

    offline = hub_offline()
    if not offline:
        return
    from slm_ray import hub_fetch
    from slm_ray.errors import SlmRayError

    missing = [i.what for i in items if i.hub_repo and not hub_fetch.is_cached(*i.hub_repo)]
    if missing:
        raise SlmRayError(f"{offline} forbids downloads, and {', '.join(missing)} must come from the hub: "
                          f"run slm-ray fetch without {offline.partition('=')[0]} (fetching is what prepares "
                          "a machine for offline runs)")


def fetch_items(items: list[Item]) -> int:
    """Fetch each item, one line each; a failure is reported at the end and does not stop the others."""
    from slm_ray import hub_fetch

    _quiet_loggers()
    failed: list[str] = []
    outcomes: list[str] = []
    for item in items:
        try:
            kind, text = item.fetch()
        except (ItemError, OSError) as exc:  # OSError: a cache folder that cannot be read or written
            failed.append(f"{item.what}: {hub_fetch.redact(str(exc))}")
            print(one_line(f"{item.what}: {item.origin}: FAILED (below)"), flush=True)
            continue
        outcomes.append(kind)
        print(one_line(f"{item.what}: {item.origin}: {text}"), flush=True)
    downloaded = outcomes.count(DOWNLOADED)
    summary = f"fetched {len(outcomes)} item{'s' * (len(outcomes) != 1)}, {len(outcomes) - downloaded} already local"
    if failed:
        print(f"{summary}; {len(failed)} failed:", flush=True)
        for problem in failed:
            print(f"error: {one_line(problem)}", file=sys.stderr)
        return 1
    s3 = any(i.origin.startswith("s3://") for i in items)
    print(summary + ": with HF_HUB_OFFLINE=1, runs of this plan on this machine need no network"
          + (" (but for one request per s3:// file, asking its ETag)" if s3 else ""))
    return 0


def _quiet_loggers() -> None:
    """Each item's line says what the storage log would (downloading / using cached)."""
    for name in ("slm_ray.storage", "httpx2", "botocore"):  # clients that log each request or credential lookup
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.stderr.isatty():  # progress bars in a log file are noise; hub_fetch prints a line instead
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()


if __name__ == "__main__":
    sys.exit(main())
