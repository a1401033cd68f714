"""The typed content of ``results.json`` and the flat view of it that Tune, the sweep summary and
``report --verify`` share, so that every reader names and rounds the same numbers the same way."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict

#: The metrics of a run, headline first.
METRICS = ("token_recall", "exact_match", "f1", "match", "retrieval_recall")


class MetricSummary(BaseModel):
    """A metric's mean over the examples that have it, with its 95% bootstrap interval."""

    model_config = ConfigDict(extra="allow")

    mean: float
    ci_low: float
    ci_high: float
    n: int


class Throughput(BaseModel):
    """Time spent, summed over every segment (process) that generated answers for the run."""

    model_config = ConfigDict(extra="allow")

    generation_seconds: float = 0.0
    examples_per_second: float | None = None
    tokens_per_second: float | None = None
    retrieval_seconds: float = 0.0
    model_load_seconds: float = 0.0


class ModelInfo(BaseModel):
    """What the generator reported about itself; older results.json files may lack any field."""

    model_config = ConfigDict(extra="allow")

    #: The dtype the model computed in, and why: "requested", or what decided ``auto`` (hardware).
    dtype: str | None = None
    dtype_reason: str | None = None


class Results(BaseModel):
    """``results.json``: what a finished run measured."""

    model_config = ConfigDict(extra="allow")

    experiment: str
    experiment_mode: str
    model: str
    dataset: str
    retriever: str | None = None
    k: int | None = None
    n_examples: int
    n_truncated_contexts: int = 0
    metrics: dict[str, MetricSummary]
    #: Set when retrieved passages almost never hold an answer (slm_ray.evaluation.retrieval_check).
    retrieval_warning: str | None = None
    throughput: Throughput
    memory: dict[str, dict[str, float | None]] = {}
    segments: int = 1
    model_info: ModelInfo = ModelInfo()
    retriever_info: dict[str, Any] | None = None
    versions: dict[str, str] = {}

    def flat(self) -> dict[str, Any]:
        """The run as one row of numbers (means, token recall's interval, speed, peak memory)."""
        return flat_metrics(self.n_examples, {k: v.model_dump() for k, v in self.metrics.items()}) | {
            "examples_per_second": self.throughput.examples_per_second,
            "tokens_per_second": self.throughput.tokens_per_second,
            "model_load_seconds": self.throughput.model_load_seconds,
            "model_peak_rss_mb": (self.memory.get("model") or {}).get("peak_rss_mb"),
            "model_peak_gpu_mb": peak_gpu(self.memory.get("model") or {}),
        }


def flat_metrics(n_examples: int, metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """``n_examples``, every metric's mean and token recall's interval (also for recomputed metrics)."""
    row: dict[str, Any] = {"n_examples": n_examples}
    for metric in METRICS:
        row[metric] = (metrics.get(metric) or {}).get("mean")
    recall = metrics.get("token_recall") or {}
    row["token_recall_ci_low"] = recall.get("ci_low")
    row["token_recall_ci_high"] = recall.get("ci_high")
    return row


def peak_gpu(memory: dict[str, Any]) -> float | None:
    """The largest GPU figure measured (NVML's per-process use or torch's allocator peaks)."""
    known = [memory.get(k) for k in ("peak_gpu_mb", "torch_peak_reserved_mb", "torch_peak_allocated_mb")]
    known = [v for v in known if v is not None]
    return max(known) if known else None
