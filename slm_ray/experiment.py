"""One experiment (one sweep trial): dataset -> contexts -> prompts -> answers -> metrics -> files.

Free of Ray on purpose: the sweep engine calls ``run_experiment`` inside its actors and passes the
generator it keeps loaded and a client of the shared retriever actor.

Predictions are appended batch by batch, so an interrupted run resumes where it stopped; the
summary files are written atomically at the end and can be recomputed from the predictions.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from slm_ray.config import ExperimentConfig, import_object
from slm_ray.data.base import Passage, QAExample
from slm_ray.errors import ConfigError, SlmRayError
from slm_ray.evaluation.memory import MemoryMonitor
from slm_ray.evaluation.metrics import aggregate, score_example
from slm_ray.generation.base import BaseModel
from slm_ray.io import atomic_write_json, atomic_write_text
from slm_ray.tracking import build_tracker
from slm_ray.tracking.base import mask_secrets

log = logging.getLogger("slm_ray.experiment")
PREDICTIONS = "predictions.jsonl"
PROGRESS_EVERY = 50


class Retriever(Protocol):
    """What an experiment needs from a retriever: a local one or a client of the shared actor."""

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[Any]]: ...


ProgressCallback = Callable[[dict[str, float]], None]
#: A loaded generator, or a function that returns one for a config (called only if there is work).
GeneratorSource = BaseModel | Callable[[ExperimentConfig], BaseModel] | None


def output_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.experiment.output_dir) / cfg.run_name


def config_fingerprint(cfg: ExperimentConfig) -> dict[str, Any]:
    """What must not change between an interrupted run and its resumption (bookkeeping excluded)."""
    data = cfg.model_dump(by_alias=True)
    data["model"] = {k: v for k, v in data["model"].items() if k not in ("batch_size", "cleanup_every", "device",
                                                                          "gpu_memory_utilization", "num_gpus")}
    for key in ("tracker", "experiment"):
        data.pop(key)
    return data


def read_predictions(path: Path) -> list[dict[str, Any]]:
    """Rows already written; a torn last line (a crash mid-write) is dropped and rewritten later."""
    if not path.is_file():
        return []
    rows = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


def build_dataset(cfg: ExperimentConfig) -> list[QAExample]:
    return import_object(cfg.dataset.target).from_config(cfg.dataset, cfg.experiment.cache_dir).load()


def build_generator(cfg: ExperimentConfig) -> BaseModel:
    """The generator class for ``model.backend`` (or the model's own ``_target_``)."""
    target = cfg.model.target or {"hf": "slm_ray.generation.hf.HFGenerator",
                                  "vllm": "slm_ray.generation.vllm.VLLMGenerator"}[cfg.model.backend]
    return import_object(target)(cfg.model, cache_dir=cfg.experiment.cache_dir)


def build_local_retriever(cfg: ExperimentConfig) -> Any:
    from slm_ray.data.corpus import load_corpus
    from slm_ray.retrieval.base import build_or_load

    return build_or_load(cfg.retriever, load_corpus(cfg.corpus, cfg.experiment.cache_dir), cfg.experiment.cache_dir)[0]


def contexts_for(cfg: ExperimentConfig, examples: list[QAExample], retriever: Retriever | None) -> list[list[Passage] | None]:
    """The passages each example is answered with: none, its gold passage, or the top-k."""
    mode = cfg.experiment_mode
    if mode == "no_context":
        return [None] * len(examples)
    if mode == "oracle_context":
        return [list(e.gold_passages) for e in examples]
    assert retriever is not None
    passages: list[list[Passage] | None] = []
    step = cfg.experiment.retrieval_batch_size
    for start in range(0, len(examples), step):
        batch = examples[start:start + step]
        hits = retriever.retrieve([e.question for e in batch], cfg.retriever.k)
        passages.extend([h.passage for h in row] for row in hits)
    return passages


def summarize(cfg: ExperimentConfig, rows: list[dict[str, Any]], timing: dict[str, float],
              model_info: dict[str, Any], retriever_info: dict[str, Any] | None,
              memory: dict[str, Any]) -> dict[str, Any]:
    """results.json: metrics with 95% bootstrap CIs, counts, throughput, memory peaks, versions."""
    metrics = aggregate([r["metrics"] for r in rows], n_resamples=cfg.experiment.bootstrap_resamples,
                        seed=cfg.experiment.seed)
    seconds = timing.get("generation_seconds", 0.0)
    components = memory.get("components", {})
    return {
        "experiment": cfg.run_name,
        "experiment_mode": cfg.experiment_mode,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "retriever": cfg.retriever.name if cfg.experiment_mode == "retriever_context" else None,
        "k": cfg.retriever.k if cfg.experiment_mode == "retriever_context" else None,
        "n_examples": len(rows),
        "n_truncated_contexts": sum(1 for r in rows if r.get("context_truncated")),
        "metrics": metrics,
        "throughput": {
            "generation_seconds": round(seconds, 3),
            "examples_per_second": round(timing.get("generated_examples", 0) / seconds, 3) if seconds else None,
            "tokens_per_second": round(timing.get("generated_tokens", 0) / seconds, 3) if seconds else None,
            "retrieval_seconds": round(timing.get("retrieval_seconds", 0.0), 3),
            "model_load_seconds": round(model_info.get("load_seconds", 0.0), 3),
        },
        "memory": {name: {k: v for k, v in comp.items() if k.startswith("peak") or k.startswith("torch_peak")}
                   for name, comp in components.items()},
        "model_info": model_info,
        "retriever_info": retriever_info,
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("slm-ray", "torch", "transformers", "bm25s", "faiss-cpu", "sentence-transformers", "ray", "vllm"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _prediction_row(example: QAExample, passages: list[Passage] | None, text: str, generation: Any,
                    truncated: bool, retrieved: bool) -> dict[str, Any]:
    """One line of predictions.jsonl; recall@k is scored only for retrieved passages."""
    texts = [f"{p.title}\n{p.text}" for p in passages] if retrieved and passages is not None else None
    return {
        "id": example.id,
        "question": example.question,
        "answers": list(example.answers),
        "contexts": None if passages is None else [asdict(p) for p in passages],
        "context_truncated": truncated,
        "prediction": text,
        "prompt_tokens": generation.prompt_tokens,
        "generated_tokens": generation.generated_tokens,
        "metrics": score_example(text, example.answers, texts),
    }


def _running(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    rows = list(rows)
    keys = rows[0]["metrics"].keys() if rows else ()
    return {k: sum(r["metrics"][k] for r in rows) / len(rows) for k in keys}


def run_experiment(cfg: ExperimentConfig, *, generator: GeneratorSource = None, retriever: Retriever | None = None,
                   progress: ProgressCallback | None = None, show_progress: bool = True) -> dict[str, Any]:
    """Run (or resume) one experiment and return its results.json content.

    ``generator``/``retriever`` are borrowed when given (kept loaded by the caller) and built here
    otherwise; ``generator`` may be a function of the config, called only when there is work left.
    ``progress`` receives running metrics after every batch.
    """
    out = output_dir(cfg)
    examples = build_dataset(cfg)
    new_root = _first_missing_folder(out)
    try:
        return _run(cfg, out, examples, generator, retriever, progress, show_progress)
    except SlmRayError:
        if new_root is not None and not (out / PREDICTIONS).is_file():
            shutil.rmtree(new_root, ignore_errors=True)  # a refused run leaves nothing behind
        raise


def _first_missing_folder(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what this run would create)."""
    missing = None
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing = folder
    return missing


def _run(cfg: ExperimentConfig, out: Path, examples: list[QAExample], generator: GeneratorSource,
         retriever: Retriever | None, progress: ProgressCallback | None, show_progress: bool) -> dict[str, Any]:
    from tqdm.auto import tqdm

    _check_resumable(cfg, out)
    predictions_path = out / PREDICTIONS
    done = {r["id"]: r for r in read_predictions(predictions_path)}
    pending = [e for e in examples if e.id not in done]
    monitor = MemoryMonitor(interval_s=cfg.experiment.memory_interval_s).start()
    timing: dict[str, float] = {"generation_seconds": 0.0, "generated_examples": 0, "generated_tokens": 0}
    retriever_info, model_info, rows = None, _previous_model_info(out), done
    tracker = None
    stack = ExitStack()
    try:
        contexts: list[list[Passage] | None] = []
        if pending:
            started = time.perf_counter()
            # A borrowed retriever (the sweep's shared actor) measures its memory in its own process.
            measure_here = retriever is None and cfg.experiment_mode == "retriever_context"
            with monitor.phase("retriever") if measure_here else nullcontext():
                if cfg.experiment_mode == "retriever_context":
                    retriever = retriever or build_local_retriever(cfg)
                    retriever_info = getattr(retriever, "describe", lambda: None)()
                contexts = contexts_for(cfg, pending, retriever)
            timing["retrieval_seconds"] = time.perf_counter() - started
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(log_to_file(out / "run.log"))
        log.info("%s: %d examples, %d already done", cfg.run_name, len(examples), len(done))
        atomic_write_json(out / "config.json", mask_secrets(cfg.model_dump(by_alias=True)))
        _rewrite_clean(predictions_path, list(done.values()))
        tracker = build_tracker(cfg.tracker, cfg.run_name, _tags(cfg))
        tracker.log_params(mask_secrets(cfg.model_dump(by_alias=True)))
        if pending:
            with monitor.phase("model"):
                generator = generator(cfg) if callable(generator) else generator or build_generator(cfg)
                generator.adopt(cfg.model)  # a kept-loaded model decodes with this run's settings
                bar = tqdm(total=len(examples), initial=len(done), desc=cfg.run_name, unit="q",
                           disable=not show_progress)
                rows = _generate(cfg, generator, pending, contexts, predictions_path, done, timing, tracker,
                                 monitor, progress, bar)
            model_info = generator.describe()
    except BaseException:
        if tracker is not None:
            tracker.close()
        stack.close()
        raise
    finally:
        monitor.stop()
    with stack:
        return _finish(cfg, out, examples, rows, timing, model_info, retriever_info, monitor.summary(), tracker)


def _finish(cfg: ExperimentConfig, out: Path, examples: list[QAExample], rows: dict[str, dict[str, Any]],
            timing: dict[str, float], model_info: dict[str, Any], retriever_info: dict[str, Any] | None,
            memory: dict[str, Any], tracker: Any) -> dict[str, Any]:
    """Write memory_usage.json and results.json, report to the tracker, close it."""
    atomic_write_json(out / "memory_usage.json", memory)
    order = {e.id: i for i, e in enumerate(examples)}
    ordered = sorted((r for r in rows.values() if r["id"] in order), key=lambda r: order[r["id"]])
    results = summarize(cfg, ordered, timing, model_info, retriever_info, memory)
    atomic_write_json(out / "results.json", results)
    tracker.log_final({f"{k}": v["mean"] for k, v in results["metrics"].items()})
    for name in ("results.json", PREDICTIONS, "memory_usage.json", "config.json"):
        tracker.log_artifact(name, out / name)
    note = tracker.close()
    if note:
        log.info(note)
    return results


@contextmanager
def log_to_file(path: Path) -> Iterator[None]:
    """Copy slm_ray's log records into the run folder's run.log while the run lasts."""
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    package_logger = logging.getLogger("slm_ray")
    previous_level = package_logger.level
    if package_logger.getEffectiveLevel() > logging.INFO:
        package_logger.setLevel(logging.INFO)
    package_logger.addHandler(handler)
    try:
        yield
    finally:
        package_logger.removeHandler(handler)
        package_logger.setLevel(previous_level)
        handler.close()


def _previous_model_info(out: Path) -> dict[str, Any]:
    """Model facts from an earlier complete run, for a rerun that has nothing left to generate."""
    try:
        return json.loads((out / "results.json").read_text())["model_info"]
    except (OSError, ValueError, KeyError):
        return {}


def _generate(cfg: ExperimentConfig, generator: BaseModel, pending: list[QAExample],
              contexts: list[list[Passage] | None], predictions_path: Path, done: dict[str, dict[str, Any]],
              timing: dict[str, float], tracker: Any, monitor: MemoryMonitor, progress: ProgressCallback | None,
              bar: Any) -> dict[str, dict[str, Any]]:
    """Answer ``pending`` batch by batch, appending each batch to predictions.jsonl as it lands."""
    from slm_ray.generation.prompts import build_prompt

    built = [build_prompt(e.question, c, cfg.prompt, generator, cfg.model.max_prompt_tokens)
             for e, c in zip(pending, contexts)]
    rows = dict(done)
    retrieved = cfg.experiment_mode == "retriever_context"
    last_logged = 0
    started = time.perf_counter()
    with open(predictions_path, "a", encoding="utf-8") as handle, bar:
        for indices, generations in generator.generate_batches([p for p, _ in built]):
            batch_rows = [_prediction_row(pending[i], contexts[i], g.text, g, built[i][1], retrieved)
                          for i, g in zip(indices, generations)]
            handle.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in batch_rows))
            handle.flush()
            for r, g in zip(batch_rows, generations):
                rows[r["id"]] = r
                timing["generated_tokens"] += g.generated_tokens
            timing["generated_examples"] += len(batch_rows)
            timing["generation_seconds"] = time.perf_counter() - started
            bar.update(len(batch_rows))
            running = _running(rows.values())
            bar.set_postfix(token_recall=f"{running.get('token_recall', 0):.3f}")
            if len(rows) - last_logged >= PROGRESS_EVERY or len(rows) == len(done) + len(pending):
                last_logged = len(rows)
                _stream(tracker, running, timing, monitor, len(rows), progress)
    return rows


def _stream(tracker: Any, running: dict[str, float], timing: dict[str, float], monitor: MemoryMonitor, step: int,
            progress: ProgressCallback | None) -> None:
    memory = monitor.latest()
    speed = timing["generated_examples"] / timing["generation_seconds"] if timing["generation_seconds"] else 0.0
    tracker.log_scalars("metrics", running, step)
    tracker.log_scalars("throughput", {"examples_per_second": speed}, step)
    tracker.log_scalars("memory_mb", {"rss": memory.get("rss_mb"), "peak_rss": memory.get("peak_rss_mb"),
                                      "gpu": memory.get("gpu_mb")}, step)
    if progress:
        progress({"examples_done": step, "examples_per_second": speed, "peak_rss_mb": memory.get("peak_rss_mb") or 0.0,
                  "peak_gpu_mb": memory.get("peak_gpu_mb") or 0.0,
                  "torch_peak_allocated_mb": memory.get("torch_peak_allocated_mb") or 0.0,
                  **{f"running_{k}": v for k, v in running.items()}})


def _tags(cfg: ExperimentConfig) -> list[str]:
    tags = [f"model:{cfg.model.name}", f"mode:{cfg.experiment_mode}", f"dataset:{cfg.dataset.name}"]
    if cfg.experiment_mode == "retriever_context":
        tags.append(f"retriever:{cfg.retriever.name}")
    return tags


def _check_resumable(cfg: ExperimentConfig, out: Path) -> None:
    """Resume only the same experiment: a different config under the same name is an error."""
    saved = out / "config.json"
    if not saved.is_file() or not (out / PREDICTIONS).is_file():
        return
    previous = json.loads(saved.read_text())
    from slm_ray.config import ExperimentConfig as Schema

    try:
        previous_fp = config_fingerprint(Schema.model_validate(previous))
    except Exception:
        previous_fp = None
    if previous_fp != config_fingerprint(cfg):
        raise ConfigError(f"{out} holds a run with a different config; pick another experiment.name "
                          "or delete that folder")


def _rewrite_clean(path: Path, rows: list[dict[str, Any]]) -> None:
    """Drop a torn last line left by a crash, so appends start on a clean line."""
    if path.is_file():
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        if path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)
