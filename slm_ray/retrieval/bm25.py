"""BM25 with bm25s, built in shards: sparse, fast on CPU, no model to load.

The corpus is cut into shards of ``retriever.shard_size`` consecutive passages; each shard is one
bm25s index in its own folder (``shards/00000/`` ...). A shard scores its passages with its own
document frequencies and average length, as the shards of a search engine do: on a shuffled or
large corpus these statistics hardly differ from the whole corpus's, and a corpus smaller than one
shard is one shard, i.e. exactly the unsharded bm25s BM25 (the built-in corpus's results do not
change). A query is answered by every shard's top-k, merged by score.

Why shards: a build keeps one shard's token lists in memory, not 21M passages', and it survives a
kill. Finished shards are written, each atomically and with its own manifest, into the persistent
``<index>.partial/`` folder beside the index; a rerun verifies them and builds only the missing
ones. When all are there, they are hard-linked into the staging folder of the index, which is
completed (manifest, rename) and verified as every cache entry is; then the partial folder goes.

Shards are loaded with bm25s' ``mmap=True``: the score matrix stays in the page cache, so a retriever
actor's resident memory is the shards' vocabularies (compact arrays, ``bm25_shard``) plus the pages
queries touch, well below the index size. Passage texts are read from the corpus (a memory-mapped ``PassageStore``) by index.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_ray.data.base import Passage
from slm_ray.logs import STEP
from slm_ray.retrieval.base import BaseRetriever, passage_text, shards_done_text
from slm_ray.retrieval.bm25_shard import bm25s_module

log = logging.getLogger("slm_ray.retrieval")

SHARDS_FOLDER = "shards"
SHARDS_FILE = "shards.json"


def shard_bounds(n_passages: int, shard_size: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each shard: consecutive passages, the last shard possibly shorter."""
    return [(start, min(start + shard_size, n_passages)) for start in range(0, max(n_passages, 1), shard_size)]


def _shard_name(number: int) -> str:
    return f"{number:05d}"


def _build_shard(retriever: "BM25Retriever", number: int, start: int, stop: int, partial: Path) -> Path:
    """Index passages ``start .. stop`` and save them as ``partial/<number>``: written into a hidden
    folder, given a manifest, then renamed, so a shard folder that exists is a whole shard."""
    from slm_ray.store.cache_manifest import write_manifest

    model = retriever.index_passages(retriever.passages[start:stop])
    temporary = partial / f".tmp-{_shard_name(number)}-{uuid.uuid4().hex[:8]}"
    temporary.mkdir()
    try:
        model.save(str(temporary))
        write_manifest(temporary)
        try:
            os.replace(temporary, partial / _shard_name(number))
        except OSError:
            if not (partial / _shard_name(number)).is_dir():
                raise
            shutil.rmtree(temporary, ignore_errors=True)  # another process finished the same shard first
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    return partial / _shard_name(number)


class BM25Retriever(BaseRetriever):
    """bm25s over stemmed tokens without stopwords (PyStemmer, bm25s' English list), in shards."""

    def __init__(self, config: Any, passages: Sequence[Passage]):
        super().__init__(config, passages)
        self._shards: list[tuple[int, Any]] = []  # (offset of its first passage, bm25s model)
        self._stemmer = None

    @property
    def bounds(self) -> list[tuple[int, int]]:
        return shard_bounds(len(self.passages), self.config.shard_size)

    def _tokenize(self, texts: list[str]) -> Any:
        bm25s = bm25s_module()
        if self._stemmer is None and self.config.stemmer:
            import Stemmer

            self._stemmer = Stemmer.Stemmer(self.config.stemmer)
        return bm25s.tokenize(texts, stopwords=self.config.stopwords, stemmer=self._stemmer, show_progress=False)

    def index_passages(self, passages: list[Passage]) -> Any:
        """One bm25s index over ``passages``."""
        tokens = self._tokenize([passage_text(p) for p in passages])
        if not tokens.vocab:
            from slm_ray.errors import DataError

            raise DataError(f"no passage of the corpus has a word left once stopwords "
                            f"(retriever.stopwords={self.config.stopwords!r}) are removed: BM25 has nothing to index")
        model = bm25s_module().BM25(k1=self.config.k1, b=self.config.b)
        model.index(tokens, show_progress=False)
        return model

    def build(self) -> None:
        """Every shard in memory (the resumable on-disk build of several is ``build_into``)."""
        self._shards = [(start, self.index_passages(self.passages[start:stop])) for start, stop in self.bounds]

    def build_into(self, staging: Path, work: Path) -> None:
        """One shard: built and saved as one bm25s folder, as before shards. Several: build those
        missing from ``work`` (kept there across kills), then link all of them into ``staging``."""
        bounds = self.bounds
        if len(bounds) == 1:
            super().build_into(staging, work)
            return
        missing = self.missing_shards(work)
        reused = len(bounds) - len(missing)
        started = time.perf_counter()
        for built, (number, start, stop) in enumerate(missing, start=1):
            _build_shard(self, number, start, stop, work)
            log.info("bm25 shard %d (passages %d-%d) indexed: %s", number, start, stop,
                     shards_done_text(built, len(missing), started), extra=STEP)
        if reused:
            log.info("bm25: %d of %d shards kept from an interrupted build in %s", reused, len(bounds), work)
        for number in range(len(bounds)):
            _link_tree(work / _shard_name(number), staging / SHARDS_FOLDER / _shard_name(number))
        self._write_bounds(staging)
        self.load(staging)

    def missing_shards(self, work: Path, tidy: bool = True) -> list[tuple[int, int, int]]:
        """``(number, start, stop)`` of the shards ``work`` lacks; a shard that fails its check is
        removed (built again), and with ``tidy`` (under the index's build lock) so are the folders
        that killed processes left half-written."""
        from slm_ray.store.cache_manifest import verify_manifest

        work.mkdir(parents=True, exist_ok=True)
        for leftover in work.glob(".tmp-*") if tidy else ():  # a shard being written when its process died
            shutil.rmtree(leftover, ignore_errors=True)
        missing = []
        for number, (start, stop) in enumerate(self.bounds):
            done = work / _shard_name(number)
            if done.is_dir() and verify_manifest(done) is None:
                continue
            if done.exists():
                log.warning("bm25 shard %s failed its check; building it again", done)
                shutil.rmtree(done)
            missing.append((number, start, stop))
        return missing

    def build_shard(self, number: int, work: Path) -> None:
        """Shard ``number`` into ``work`` (one of a build's independent parts: ``slm_ray.retrieval.ray_shards``)."""
        start, stop = self.bounds[number]
        _build_shard(self, number, start, stop, work)

    def save(self, folder: Path) -> None:
        """One shard: the bm25s folder itself (today's layout); several: ``shards/<n>/`` and their bounds."""
        if len(self._shards) == 1:
            self._shards[0][1].save(str(folder))
            return
        for number, (_, model) in enumerate(self._shards):
            target = folder / SHARDS_FOLDER / _shard_name(number)
            target.mkdir(parents=True)
            model.save(str(target))
        self._write_bounds(folder)

    def _write_bounds(self, folder: Path) -> None:
        from slm_ray.store.io import atomic_write_json

        atomic_write_json(folder / SHARDS_FILE, {"shard_size": self.config.shard_size,
                                                 "bounds": [list(b) for b in self.bounds]})

    def load(self, folder: Path) -> None:
        """Every shard, memory-mapped; refused (so rebuilt) when the shards do not fit the corpus."""
        if not (folder / SHARDS_FILE).exists():
            folders = [folder]  # one shard: the bm25s folder itself
            saved = [[0, len(self.passages)]]
        else:
            saved = json.loads((folder / SHARDS_FILE).read_text(encoding="utf-8"))["bounds"]
            folders = [folder / SHARDS_FOLDER / _shard_name(number) for number in range(len(saved))]
        if [tuple(b) for b in saved] != self.bounds:
            raise ValueError(f"index has shards {saved}, corpus of {len(self.passages)} passages needs {self.bounds}")
        from slm_ray.retrieval.bm25_shard import load_shard, release_freed_memory

        shards = []
        for number, ((start, stop), path) in enumerate(zip(self.bounds, folders)):
            model = load_shard(path)  # compact vocabulary, quicker scoring (bm25_shard)
            if model.scores["num_docs"] != stop - start:
                raise ValueError(f"index shard {number} holds {model.scores['num_docs']} documents, "
                                 f"corpus has {stop - start}")
            shards.append((start, model))
        self._shards = shards
        release_freed_memory()

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        import numpy as np

        # tokenised once; each shard maps the tokens through its own vocabulary, as bm25s does itself
        tokens = bm25s_module().tokenization.convert_tokenized_to_string_list(self._tokenize(queries))
        found_ids, found_scores = [], []
        for start, model in self._shards:
            doc_ids, scores = model.retrieve(tokens, k=min(k, model.scores["num_docs"]), show_progress=False)
            found_ids.append(np.asarray(doc_ids) + start)
            found_scores.append(np.asarray(scores))
        if len(found_ids) == 1:
            ids, scores = found_ids[0], found_scores[0]
        else:
            ids, scores = np.concatenate(found_ids, axis=1), np.concatenate(found_scores, axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # ties: the earlier shard first
            ids, scores = np.take_along_axis(ids, order, axis=1), np.take_along_axis(scores, order, axis=1)
        return [list(zip(row_ids.tolist(), row_scores.tolist())) for row_ids, row_scores in zip(ids, scores)]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "shards": len(self._shards) or len(self.bounds)}


def _link_tree(source: Path, target: Path) -> None:
    """``target`` as a copy of ``source`` made of hard links: no bytes copied, and ``source``
    stays whole until the finished index is in place."""
    for root, _, files in os.walk(source):
        destination = target / Path(root).relative_to(source)
        destination.mkdir(parents=True, exist_ok=True)
        for name in files:
            os.link(os.path.join(root, name), destination / name)
