"""Typed schema of the composed Hydra config, and its validation.

Hydra composes YAML; this module decides whether the result makes sense *before* any model,
index or file is touched. Every section rejects unknown keys, so a typo is an error, not a
silently ignored setting. Errors name the dotted key, the bad value and what would be valid.
"""

from __future__ import annotations

import importlib
import string
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)
from pydantic.fields import FieldInfo

from slm_ray.errors import ConfigError
from slm_ray.store.names import check_name

ExperimentMode = Literal["no_context", "oracle_context", "retriever_context"]
EXPERIMENT_MODES: tuple[str, ...] = ("no_context", "oracle_context", "retriever_context")


class Section(BaseModel):
    """A config section: unknown keys are errors; ``_target_`` is read as ``target``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, frozen=True)


def _booleans_are_not_numbers(model: type[BaseModel], raw: Any, prefix: str = "") -> None:
    """Refuse a boolean where a number goes and a number where a boolean goes, naming the key:
    pydantic would read ``dataset.limit=true`` as a limit of 1 and ``dataset.sample=1`` as true."""
    if not isinstance(raw, dict):
        return
    for name, field in model.model_fields.items():
        key = field.alias if field.alias in raw else name
        if key not in raw:
            continue
        value, dotted = raw[key], f"{prefix}{key}"
        section = _section_for(field.annotation, value)
        if section is not None:
            _booleans_are_not_numbers(section, value, dotted + ".")
            continue
        kinds = _scalar_kinds(field.annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ConfigError(f"{dotted}={str(value).lower()}: a boolean is not a number "
                              f"(valid: {_valid_numbers(field, kinds)})")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and kinds - {type(None)} == {bool}:
            raise ConfigError(f"{dotted}={value!r}: a number is not a boolean (valid: true or false)")


def _section_for(annotation: Any, value: Any) -> type[BaseModel] | None:
    """The section model a field holds (for a union of retrievers, the one ``value['type']`` names)."""
    if get_origin(annotation) is Annotated:
        return _section_for(get_args(annotation)[0], value)
    if isinstance(annotation, type) and issubclass(annotation, Section):
        return annotation
    if get_origin(annotation) in (Union, UnionType) and isinstance(value, dict):
        for member in get_args(annotation):
            tag = getattr(member, "model_fields", {}).get("type")
            if tag is not None and tag.default == value.get("type"):
                return member
    return None


def _scalar_kinds(annotation: Any) -> set[Any]:
    """The types a field's annotation accepts, unions flattened (``int | None`` -> {int, NoneType};
    ``FolderName | None`` -> {str, NoneType})."""
    args = get_args(annotation)
    if get_origin(annotation) is Annotated:
        return _scalar_kinds(args[0])
    if args and get_origin(annotation) in (Union, UnionType):
        return set().union(*(_scalar_kinds(a) for a in args))
    return {annotation}


def _valid_numbers(field: FieldInfo, kinds: set[Any]) -> str:
    """``an integer >= 1, or null``: what a numeric field takes, from its type and bounds."""
    bounds = [f"{sign} {getattr(bound, attribute)}" for bound in field.metadata
              for attribute, sign in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"))
              if getattr(bound, attribute, None) is not None]
    text = ("an integer" if float not in kinds else "a number") + "".join(f" {b}" for b in bounds[:1])
    text += "".join(f" and {b}" for b in bounds[1:])
    return text + (", or null" if type(None) in kinds else "")


def _folder_name(value: str | None) -> str | None:
    return None if value is None else check_name(value)


def _number_as_text(value: Any) -> Any:
    """``experiment.name=123`` reaches us as an int: a number is a fine name."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


FolderName = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_folder_name)]


class ModelConfig(Section):
    """How to load a generator and how it decodes."""

    target: str | None = Field(default=None, alias="_target_")
    name: FolderName
    #: hf (transformers) | vllm ('slm-ray[gpu]'; on CPU 'slm-ray[cpu-vllm]': docs/GPU.md)
    backend: Literal["hf", "vllm"] = "hf"
    #: hub | local (a folder) | gguf_package (a GGUF shipped in a PyPI package) | tiny (tests)
    source: Literal["hub", "local", "gguf_package", "tiny"] = "hub"
    path: str
    gguf_file: str | None = None
    #: tiny models only: llama | qwen3
    architecture: Literal["llama", "qwen3"] | None = None
    #: ``auto`` = bf16 where the hardware computes it natively (a GPU of compute capability 8.0+, a CPU
    #: with AVX-512 BF16 or AMX), float32 otherwise; results.json records the choice and why.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    batch_size: int = Field(default=16, ge=1)
    max_new_tokens: int = Field(default=32, ge=1)
    #: Passages are truncated so that the prompt fits.
    max_prompt_tokens: int = Field(default=2048, ge=64)
    #: 0 = greedy; sampling is seeded by ``seed``.
    temperature: float = Field(default=0.0, ge=0.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int = 0
    #: bitsandbytes int8 weights (pip install 'slm-ray[quant]').
    load_in_8bit: bool = False
    #: auto = flash_attention_2 when installed and on a GPU, else sdpa.
    attn_implementation: Literal["auto", "sdpa", "eager", "flash_attention_2"] = "auto"
    #: The answer ends at the first of these.
    stop: tuple[str, ...] = ("\n",)
    chat_template_kwargs: dict[str, Any] = Field(default_factory=dict)
    #: gc + CUDA cache cleanup every N examples.
    cleanup_every: int = Field(default=100, ge=1)
    #: vLLM: the share of GPU memory for weights + KV cache.
    gpu_memory_utilization: float = Field(default=0.85, gt=0.0, le=1.0)
    #: vLLM: the context length to reserve KV cache for; null = the model's own (long for Qwen3).
    max_model_len: int | None = Field(default=4096, ge=64)
    #: vLLM: null = eager on CPU, vLLM's default (CUDA graphs) on a GPU.
    enforce_eager: bool | None = None
    #: vLLM on CPU: host memory for the KV cache; null = 4 full-length sequences, <= 15% of free memory.
    cpu_kv_cache_gb: float | None = Field(default=None, gt=0.0)
    #: vLLM on CPU: OpenMP threads; null = the Ray worker's CPUs, else vLLM's binding.
    cpu_threads: int | None = Field(default=None, ge=1)
    #: GPUs per sweep trial.
    num_gpus: float = Field(default=1.0, ge=0.0)

    @model_validator(mode="after")
    def _source_needs(self) -> "ModelConfig":
        if self.source == "gguf_package" and not self.gguf_file:
            raise ValueError("source=gguf_package needs gguf_file (the .gguf file name in the package)")
        if self.source == "tiny" and self.architecture is None:
            raise ValueError("source=tiny needs architecture (llama or qwen3)")
        if self.source == "tiny" and (self.load_in_8bit or self.attn_implementation == "flash_attention_2"):
            raise ValueError("the tiny test models are built in float32 with the default attention: "
                             "load_in_8bit and attn_implementation=flash_attention_2 would be recorded but not applied")
        return self


#: A question file's columns by role (``dataset.fields``): ``id`` null = the file's own "id" column
#: when it has one, else row numbers; ``context`` (a gold-passage column) enables oracle_context.
DATASET_FIELDS: dict[str, str | None] = {"question": "question", "answers": "answers", "id": None,
                                         "context": None, "title": None}
#: A corpus file's columns by role (``corpus.fields``).
CORPUS_FIELDS: dict[str, str] = {"id": "id", "title": "title", "text": "text"}


class DatasetConfig(Section):
    """Where the questions come from. ``fields`` maps a user file's columns to ours."""

    target: str = Field(alias="_target_")
    name: FolderName
    path: str
    #: auto (from the extension) | jsonl | csv | parquet
    format: Literal["auto", "jsonl", "csv", "parquet"] = "auto"
    fields: dict[str, str | None] = Field(default_factory=lambda: dict(DATASET_FIELDS))
    #: The first N questions (a seeded sample of N with ``sample: true``).
    limit: int | None = Field(default=None, ge=1)
    sample: bool = False
    seed: int = 0
    #: A BEIR folder's qrels split (``qrels/<split>.tsv``); default ``test``, or the only one there.
    split: str | None = None

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str | None]) -> dict[str, str | None]:
        unknown = sorted(set(value) - set(DATASET_FIELDS))
        if unknown:
            raise ValueError(f"unknown field name {unknown[0]!r} (valid: {', '.join(sorted(DATASET_FIELDS))})")
        return {**DATASET_FIELDS, **value}


class CorpusConfig(Section):
    """The passages a retriever searches: the built-in NQ corpus or a user's file."""

    name: FolderName
    path: str
    format: Literal["auto", "jsonl", "parquet", "tsv"] = "auto"
    fields: dict[str, str] = Field(default_factory=lambda: dict(CORPUS_FIELDS))

    @field_validator("fields")
    @classmethod
    def _known_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(CORPUS_FIELDS))
        if unknown:
            raise ValueError(f"unknown field name {unknown[0]!r} (valid: {', '.join(sorted(CORPUS_FIELDS))})")
        return {**CORPUS_FIELDS, **value}


class BM25Config(Section):
    """bm25s over stemmed, stopword-filtered tokens."""

    target: str = Field(default="slm_ray.retrieval.bm25.BM25Retriever", alias="_target_")
    type: Literal["bm25"] = "bm25"
    name: FolderName = "bm25"
    k: int = Field(default=5, ge=1, le=100)
    stemmer: str | None = "english"
    stopwords: str | None = "en"
    k1: float = Field(default=1.5, gt=0)
    b: float = Field(default=0.75, ge=0, le=1)
    #: Passages per shard: each shard is one bm25s index, built and saved on its own (so a build
    #: resumes after a kill, and one shard's token lists bound the build's memory). A corpus
    #: smaller than one shard is one shard, i.e. exactly the unsharded BM25.
    shard_size: int = Field(default=500_000, ge=1)


class DenseConfig(Section):
    """FAISS over normalised sentence embeddings (inner product = cosine)."""

    target: str = Field(default="slm_ray.retrieval.dense.DenseRetriever", alias="_target_")
    type: Literal["dense"] = "dense"
    name: FolderName = "dense"
    k: int = Field(default=5, ge=1, le=100)
    encoder: str = "builtin:all-MiniLM-L6-v2"
    #: flat (exact) | ivf (nlist, nprobe) | hnsw (hnsw_m) | ivfpq (nlist, nprobe, pq_*, train_*, rerank*):
    #: product-quantised codes for corpora too big for exact vectors in memory (Wikipedia's 21M passages).
    index_type: Literal["flat", "ivf", "hnsw", "ivfpq"] = "flat"
    #: Inverted lists of ivf/ivfpq; lowered to (training vectors / 39) on a small corpus.
    nlist: int = Field(default=64, ge=1)
    #: Lists searched per query (query-time; more = better recall, slower).
    nprobe: int = Field(default=8, ge=1)
    hnsw_m: int = Field(default=32, ge=4)
    #: ivfpq: sub-quantizers per vector (bytes per code at 8 bits); must divide the embedding dimension.
    pq_m: int = Field(default=48, ge=1)
    #: ivfpq: bits per sub-quantizer code; lowered on a corpus too small to train 2**bits centroids.
    pq_nbits: int = Field(default=8, ge=1, le=16)
    #: ivfpq: embeddings sampled (with ``train_seed``) to train the coarse and product quantizers.
    train_size: int = Field(default=131072, ge=1)
    train_seed: int = Field(default=0, ge=0)
    #: ivfpq: keep the exact vectors on disk and re-rank the PQ candidates with them.
    rerank: bool = True
    #: ivfpq with rerank: candidates re-ranked per result wanted (query-time; k * factor candidates).
    rerank_factor: int = Field(default=8, ge=1)
    encode_batch_size: int = Field(default=64, ge=1)
    #: A corpus of at least this many passages is encoded by Ray Data (an actor pool of encoders: one
    #: per GPU, or one with the node's CPUs) into resumable shards of ``ray_encode_shard_size``
    #: passages; a smaller one in this process. 0 = always, a huge value = never. The built-in
    #: corpus's shipped embeddings are used either way. Neither setting changes the index (its key).
    ray_encode_min_passages: int = Field(default=200_000, ge=0)
    ray_encode_shard_size: int = Field(default=10_000, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    #: The encoder's dtype; ``auto`` = bf16 where the hardware computes it natively (a GPU of compute
    #: capability 8.0+, a CPU with AVX-512 BF16 or AMX), float32 otherwise. Part of the index key.
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"


class HybridConfig(Section):
    """BM25 and dense rankings, each cut at ``depth``, fused by ``fusion``: ``convex`` scores a passage
    ``alpha * dense + (1 - alpha) * bm25`` over min-max normalised scores; ``rrf`` (reciprocal rank
    fusion) ``sum(1 / (rrf_k + rank))`` over the two lists. The defaults are the ones that did best on
    the tuning split of the built-in NQ questions (``bench/bench_fusion.py``)."""

    target: str = Field(default="slm_ray.retrieval.hybrid.HybridRetriever", alias="_target_")
    type: Literal["hybrid"] = "hybrid"
    name: FolderName = "hybrid"
    k: int = Field(default=5, ge=1, le=100)
    fusion: Literal["convex", "rrf"] = "convex"
    #: The weight of the dense part in ``convex``: 0.75 had the best recall@1 + recall@5 on the tuning
    #: split (530 questions) of alpha 0, 0.05, ..., 1 (``bench/results/fusion.json``).
    alpha: float = Field(default=0.75, ge=0.0, le=1.0)
    rrf_k: float = Field(default=60.0, ge=0.0)
    depth: int = Field(default=100, ge=1, le=1000)
    bm25: BM25Config = Field(default_factory=BM25Config)
    dense: DenseConfig = Field(default_factory=DenseConfig)


RetrieverConfig = Annotated[Union[BM25Config, DenseConfig, HybridConfig], Field(discriminator="type")]


class PromptConfig(Section):
    """Prompt templates; the model's chat template wraps the rendered user message."""

    name: str
    system: str | None = None
    closed_book: str
    with_context: str
    passage: str = "Title: {title}\n{text}"
    passage_separator: str = "\n\n"

    @model_validator(mode="after")
    def _placeholders(self) -> "PromptConfig":
        for key, allowed in (
            ("closed_book", {"question"}),
            ("with_context", {"question", "context"}),
            ("passage", {"title", "text", "index"}),
        ):
            template = getattr(self, key)
            names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
            unknown = sorted(names - allowed)
            if unknown:
                raise ValueError(
                    f"{key} has unknown placeholder {{{unknown[0]}}} (valid: "
                    + ", ".join("{" + a + "}" for a in sorted(allowed)) + ")"
                )
            required = {"closed_book": "question", "with_context": "context", "passage": "text"}[key]
            for needed in ({"question", required} & allowed):
                if needed not in names:
                    raise ValueError(f"{key} must contain {{{needed}}} (without it the model never sees the "
                                     f"{'passages' if needed != 'question' else 'question'})")
        return self


class TrackerConfig(Section):
    """Where metrics stream to. ``offline: auto`` means offline unless credentials are found."""

    type: Literal["clearml", "none"]
    project: str = "slm-ray"
    tags: tuple[str, ...] = ()
    offline: Literal["auto", "true", "false"] | bool = "auto"


class ExperimentSection(Section):
    """Run identity and bookkeeping."""

    name: FolderName | None = None
    output_dir: str = "outputs"
    cache_dir: str = ".cache"
    seed: int = 0
    bootstrap_resamples: int = Field(default=1000, ge=10)
    memory_interval_s: float = Field(default=0.5, gt=0.0)
    retrieval_batch_size: int = Field(default=256, ge=1)
    #: Start over when the inputs changed: the old folder is moved aside to ``<name>.replaced-<time>``.
    replace: bool = False
    #: ``s3://bucket/prefix``: retrieval indexes missing locally are downloaded from there, and those
    #: built here uploaded, so a cluster without a shared file system builds each once; null = local only.
    index_store: str | None = None

    @field_validator("output_dir", "cache_dir")
    @classmethod
    def _path_fits(cls, value: str) -> str:
        """A path the file system can hold: no part over 255 bytes (the limit of common file systems)."""
        for part in value.replace("\\", "/").split("/"):
            if len(part.encode("utf-8")) > 255:
                raise ValueError(f"has a part of {len(part.encode('utf-8'))} bytes (at most 255 per folder name)")
        return value

    @field_validator("index_store")
    @classmethod
    def _s3_folder(cls, value: str | None) -> str | None:
        """Only S3 is a shared index store: a local path would be just a second cache_dir."""
        if value is not None and (not value.startswith("s3://") or not value[len("s3://"):].strip("/")):
            raise ValueError(f"{value!r} is not an S3 folder (valid: s3://bucket or s3://bucket/prefix, or null)")
        return value


class ExperimentConfig(Section):
    """One experiment: one model, one dataset, one mode (and a retriever in retriever_context)."""

    experiment_mode: ExperimentMode
    model: ModelConfig
    dataset: DatasetConfig
    corpus: CorpusConfig
    retriever: RetrieverConfig
    prompt: PromptConfig
    tracker: TrackerConfig
    experiment: ExperimentSection

    @property
    def run_name(self) -> str:
        """``experiment.name``, or a name built from what distinguishes this run."""
        if self.experiment.name:
            return self.experiment.name
        parts = [self.model.name, self.dataset.name, self.experiment_mode]
        if self.experiment_mode == "retriever_context":
            parts.append(f"{self.retriever.name}-k{self.retriever.k}")
        return "_".join(parts)

    @model_validator(mode="after")
    def _run_name_fits(self) -> "ExperimentConfig":
        """The default run name joins several names: it must itself be a safe folder name."""
        if not self.experiment.name:
            try:
                check_name(self.run_name)
            except ValueError as exc:
                raise ValueError(f"the run name {self.run_name!r} {exc}; set experiment.name") from None
        return self


def import_object(dotted: str) -> Any:
    """Import ``pkg.module.Name`` (or ``pkg.module:Name``); a clear error when it is not there."""
    module_name, _, attr = dotted.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"_target_={dotted!r} cannot be imported: {exc}") from None


RETRIEVER_TYPES = ("bm25", "dense", "hybrid")


def format_validation_error(exc: ValidationError, schema: type[BaseModel] | None = None) -> str:
    """The first problem of a pydantic error as ``key=value: what is wrong``. ``schema``: the model
    of a file other than the config (a sweep file), whose valid keys an unknown key is shown beside."""
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"]]
    if len(loc) > 1 and loc[0] == "retriever" and loc[1] in RETRIEVER_TYPES:
        del loc[1]  # the union's tag, not a key the user wrote
    key = ".".join(loc) or "config"
    if err["type"] == "extra_forbidden" and schema is not None:
        for part in loc[:-1]:
            schema = schema.model_fields[part].annotation  # type: ignore[assignment]
        where = f"{'.'.join(loc[:-1])}: " if len(loc) > 1 else ""
        return f"{where}unknown key {loc[-1]!r} (valid: {', '.join(schema.model_fields)})"  # type: ignore[union-attr]
    if err["type"] == "extra_forbidden":
        return f"unknown config key {key!r}"
    if err["type"] == "missing":
        return f"missing config key {key!r}"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    if isinstance(value, bool) or value is None:  # as the user writes it: true, false, null
        return f"{key}={'null' if value is None else str(value).lower()}: {message}"
    if isinstance(value, (str, int, float)):
        return f"{key}={value!r}: {message}"
    return f"{key}: {message}"


def validate_config(raw: dict[str, Any]) -> ExperimentConfig:
    """Turn a composed config (plain dict) into a checked ``ExperimentConfig`` or raise ConfigError."""
    _booleans_are_not_numbers(ExperimentConfig, raw)
    try:
        cfg = ExperimentConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None
    dataset_cls = import_object(cfg.dataset.target)
    if cfg.experiment_mode == "oracle_context" and not dataset_cls.supports_oracle(cfg.dataset):
        raise ConfigError(
            f"experiment_mode=oracle_context needs gold passages, which dataset={cfg.dataset.name} "
            "does not have (valid modes for it: no_context, retriever_context)"
        )
    return cfg
