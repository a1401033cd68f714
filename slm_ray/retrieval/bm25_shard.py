"""A loaded bm25s shard, lean in memory and quick to score: its vocabulary in three numpy arrays
instead of a Python dict, and its scores summed without ``np.add.at``.

bm25s keeps ``vocab_dict`` (token -> id) and ``unique_token_ids_set`` as Python objects: about
170 bytes a token, 33 MB for the 199,059 tokens of one 500,000-passage shard of the scale bench,
which was most of a memory-mapped retriever actor's own memory. Here the tokens are one UTF-8 byte
buffer in sorted order with their offsets and ids (about 20 bytes a token), looked up by binary
search: a query has a few dozen tokens, so the lookups cost microseconds. The score matrix itself is
memory-mapped by bm25s (``mmap=True``).

Scoring: bm25s' numpy backend adds each query token's column of the score matrix into the
passages' scores with ``np.add.at``, which is unbuffered and slow on long columns (a frequent word
of a 500,000-passage shard). Within one column every passage appears once, so a buffered
``scores[rows] += column`` adds the same numbers in the same order: the scores are bit for bit
bm25s' own, and the top-k selection is bm25s' own.
"""

from __future__ import annotations

import bisect
import functools
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

#: The vocabulary file bm25s writes beside a saved index.
VOCAB_FILE = "vocab.index.json"


class CompactVocab(Mapping[str, int]):
    """token -> id, read-only, answering ``in`` and ``[]`` as the dict bm25s would hold."""

    def __init__(self, vocab: Mapping[str, int]):
        import numpy as np

        pairs = sorted((token.encode("utf-8"), token_id) for token, token_id in vocab.items())
        lengths = np.fromiter((len(token) for token, _ in pairs), dtype=np.int64, count=len(pairs))
        self._offsets = np.zeros(len(pairs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=self._offsets[1:])
        self._blob = b"".join(token for token, _ in pairs)
        self._ids = np.fromiter((token_id for _, token_id in pairs), dtype=np.int64, count=len(pairs))

    @classmethod
    def read(cls, folder: str | Path) -> "CompactVocab":
        """The vocabulary of the bm25s index saved in ``folder`` (the dict it parses is freed at once)."""
        with open(Path(folder) / VOCAB_FILE, encoding="utf-8") as handle:
            return cls(json.load(handle))

    def _token(self, position: int) -> bytes:
        return self._blob[self._offsets[position]:self._offsets[position + 1]]

    def _position(self, token: object) -> int | None:
        if not isinstance(token, str):
            return None
        wanted = token.encode("utf-8")
        position = bisect.bisect_left(range(len(self._ids)), wanted, key=self._token)
        return position if position < len(self._ids) and self._token(position) == wanted else None

    def __contains__(self, token: object) -> bool:
        return self._position(token) is not None

    def __getitem__(self, token: str) -> int:
        position = self._position(token)
        if position is None:
            raise KeyError(token)
        return int(self._ids[position])

    def __iter__(self) -> Iterator[str]:
        return (self._token(i).decode("utf-8") for i in range(len(self._ids)))

    def __len__(self) -> int:
        return len(self._ids)

    def id_set(self) -> Any:
        """What bm25s keeps as ``unique_token_ids_set``: a ``range`` where the ids are 0..n-1 (as bm25s
        numbers them), which answers ``in`` without a set of boxed ints."""
        import numpy as np

        if len(self._ids) and np.array_equal(np.sort(self._ids), np.arange(len(self._ids))):
            return range(len(self._ids))
        return set(self._ids.tolist())

    @property
    def nbytes(self) -> int:
        return len(self._blob) + self._offsets.nbytes + self._ids.nbytes


def load_shard(folder: str | Path) -> Any:
    """A saved bm25s index, memory-mapped, with the compact vocabulary and the buffered scoring."""
    model = _lean_class().load(str(folder), mmap=True, load_vocab=False, show_progress=False)
    model.vocab_dict = CompactVocab.read(folder)
    model.unique_token_ids_set = model.vocab_dict.id_set()
    return model


def _sum_columns(data: Any, indptr: Any, indices: Any, num_docs: int, query_tokens_ids: Any, dtype: Any) -> Any:
    """bm25s' ``_compute_relevance_from_scores`` with ``+=`` for ``np.add.at`` (see the module)."""
    import numpy as np

    scores = np.zeros(num_docs, dtype=dtype)
    for token in query_tokens_ids:
        start, end = indptr[token], indptr[token + 1]
        scores[indices[start:end]] += data[start:end]  # a column holds each passage once
    return scores


def bm25s_module() -> Any:
    """bm25s, imported on first use; its import sets its own logger to DEBUG, so quiet it again."""
    import bm25s

    logging.getLogger("bm25s").setLevel(logging.WARNING)
    return bm25s


@functools.cache
def _lean_class() -> type:
    """bm25s.BM25 scoring with ``_sum_columns`` (made on first use: bm25s loads only with an index)."""
    return type("LeanBM25", (bm25s_module().BM25,), {"_compute_relevance_from_scores": staticmethod(_sum_columns)})


def release_freed_memory() -> None:
    """Hand the memory of what loading parsed and dropped back to the OS: without it, the freed
    vocabulary dicts stay in the allocator's arenas and count in the actor's RSS (on the 1M-passage
    bench, 193 MB after the load, 134 MB after this). ``malloc_trim`` is glibc's; elsewhere only
    the garbage collection runs."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl)
        pass
