"""Embeddings of the built-in corpus, shipped with the package for the default encoder.

Every new user's first dense run would otherwise encode the same 3,655 passages (minutes on a
two-core CPU, about 3 GFLOP each for all-MiniLM-L6-v2); pyserini and FlashRAG ship prebuilt
indexes for their standard corpora for the same reason. They are used only when the encoder, the
dtype it runs in and the corpus are exactly the ones they were made with, and only when the file
matches the SHA-256 recorded beside it; otherwise the corpus is encoded as usual.

    python scripts/make_prebuilt_embeddings.py    # rewrites both files
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from slm_ray.data.builtin import BUILTIN_DIR

log = logging.getLogger("slm_ray.retrieval.prebuilt")

EMBEDDINGS = BUILTIN_DIR / "nq_corpus_minilm_l6_float32.npy"
RECORD = BUILTIN_DIR / "nq_corpus_minilm_l6_float32.json"


def describe(encoder: str, dtype: str, corpus: str) -> dict[str, str]:
    """What the embeddings were made with: they serve a request only when all of it is equal."""
    return {"encoder": encoder, "dtype": dtype, "corpus": corpus}


def prebuilt_embeddings(encoder: str, dtype: str, corpus: str) -> Any | None:
    """The shipped embeddings for this (encoder, dtype, corpus fingerprint), or None."""
    import numpy as np

    try:
        record = json.loads(RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if {k: record.get(k) for k in ("encoder", "dtype", "corpus")} != describe(encoder, dtype, corpus):
        return None
    try:
        blob = EMBEDDINGS.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(blob).hexdigest() != record.get("sha256"):
        log.warning("%s does not match its recorded SHA-256: encoding the corpus instead", EMBEDDINGS)
        return None
    import io

    return np.load(io.BytesIO(blob), allow_pickle=False)


def write_prebuilt(embeddings: Any, encoder: str, dtype: str, corpus: str, folder: Path = BUILTIN_DIR) -> None:
    """Save ``embeddings`` and their record (``scripts/make_prebuilt_embeddings.py``)."""
    import io

    import numpy as np

    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(embeddings, dtype="float32"), allow_pickle=False)
    blob = buffer.getvalue()
    (folder / EMBEDDINGS.name).write_bytes(blob)
    record = {**describe(encoder, dtype, corpus), "shape": list(embeddings.shape),
              "sha256": hashlib.sha256(blob).hexdigest()}
    (folder / RECORD.name).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
