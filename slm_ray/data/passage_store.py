"""A corpus on disk: passages written once into an Arrow IPC file and read back memory-mapped.

21M Wikipedia passages are ~13 GB of text and, as Python ``Passage`` objects, several times that:
more than a retriever actor should hold. A ``PassageStore`` is a ``Sequence[Passage]`` whose rows
stay in the mapped file (``<cache_dir>/corpora/<key>/passages.arrow``) until one is asked for, so
code written for a list (``len``, ``store[i]``, slices, iteration) works unchanged while the
process holds only the pages it touched.

The store is a cache entry like an index (``slm_ray.store.cache_entry``): written into a staging folder,
given a manifest, renamed into place, and rebuilt when its files fail the check. Its key is the
source file's identity (resolved path, size, mtime, ctime, inode) with the format and column
mapping, so an edited or replaced file gets a new store without the file being hashed (13 GB). It carries the corpus ``fingerprint``: the very hash
``corpus_fingerprint`` gives the same passages as a list, so indexes keep their cache keys.

Ids must be unique; a set of 21M strings would cost GBs, so each id's 8-byte hash is kept in a numpy
array, sorted once at the end, and only ids whose hashes collide are compared as strings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import operator
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

from slm_ray.data.base import Passage
from slm_ray.errors import DataError

log = logging.getLogger("slm_ray.data")

STORE_FORMAT = 1
PASSAGES_FILE = "passages.arrow"
META_FILE = "store.json"
_COLUMNS = ("id", "title", "text")


def _schema() -> Any:
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in _COLUMNS])


def _mapped_batches(path: Path) -> list[Any]:
    """The record batches of an Arrow IPC file, zero-copy views of its memory map."""
    import pyarrow as pa

    reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
    return [reader.get_batch(i) for i in range(reader.num_record_batches)]


class PassageStore(Sequence[Passage]):
    """The passages of a written store folder, read from its memory map by index."""

    def __init__(self, folder: str | Path):
        import numpy as np

        self.folder = Path(folder)
        meta = json.loads((self.folder / META_FILE).read_text(encoding="utf-8"))
        if meta.get("format") != STORE_FORMAT:
            raise ValueError(f"passage store format {meta.get('format')!r}, expected {STORE_FORMAT}")
        self.fingerprint: str = meta["fingerprint"]
        self._batches = _mapped_batches(self.folder / PASSAGES_FILE)
        self._ends = np.cumsum([batch.num_rows for batch in self._batches], dtype=np.int64)
        self._len = int(self._ends[-1]) if len(self._ends) else 0
        if self._len != meta["passages"]:
            raise ValueError(f"passage store holds {self._len} passages, its {META_FILE} says {meta['passages']}")

    def __len__(self) -> int:
        return self._len

    @overload
    def __getitem__(self, index: int) -> Passage: ...

    @overload
    def __getitem__(self, index: slice) -> list[Passage]: ...

    def __getitem__(self, index: int | slice) -> Passage | list[Passage]:
        if isinstance(index, slice):
            start, stop, step = index.indices(self._len)
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return list(self._range(start, stop))
        index = operator.index(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"passage index {index} out of range (the store holds {self._len})")
        b = int(self._ends.searchsorted(index, side="right"))
        batch = self._batches[b]
        row = index - (int(self._ends[b - 1]) if b else 0)
        passage_id, title, text = (batch.column(c)[row].as_py() for c in range(3))
        return Passage(passage_id, text, title)

    def __iter__(self) -> Iterator[Passage]:
        return self._range(0, self._len)

    def _range(self, start: int, stop: int) -> Iterator[Passage]:
        """Passages ``start .. stop`` converted a batch at a time (one ``to_pylist`` per column)."""
        first = 0
        for batch in self._batches:
            last = first + batch.num_rows
            if last > start and first < stop:
                piece = batch.slice(max(start - first, 0), min(stop, last) - max(start, first))
                ids, titles, texts = (piece.column(c).to_pylist() for c in range(3))
                for passage_id, title, text in zip(ids, titles, texts):
                    yield Passage(passage_id, text, title)
            if last >= stop:
                return
            first = last

    def __reduce__(self) -> tuple[Any, ...]:
        return (PassageStore, (str(self.folder),))  # reopened, not copied: a store pickles as its path

    def __repr__(self) -> str:
        return f"PassageStore({str(self.folder)!r}, {self._len} passages)"


def write_store(folder: Path, chunks: Iterable[Any], where: Callable[[int], str]) -> dict[str, Any]:
    """Write checked chunks (``corpus_stream.Chunk``) into ``folder``: the Arrow file, then, once
    every id is known unique, ``store.json``. Returns the metadata written."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    started = time.perf_counter()
    schema = _schema()
    digest = hashlib.sha256()
    hashes: list[Any] = []
    count = 0
    with pa.OSFile(str(folder / PASSAGES_FILE), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for chunk in chunks:
            batch = pa.record_batch([pa.array(chunk.ids, pa.string()), pa.array(chunk.titles, pa.string()),
                                     pa.array(chunk.texts, pa.string())], schema=schema)
            _update_fingerprint(digest, pc.binary_join_element_wise(*batch.columns, "", "\0"))
            # Python's str hash: 8 bytes, already cached on each id, and stable within this process
            hashes.append(np.fromiter(map(hash, chunk.ids), dtype=np.int64, count=len(chunk.ids)))
            writer.write_batch(batch)
            count += batch.num_rows
    _refuse_duplicates(folder / PASSAGES_FILE, np.concatenate(hashes) if hashes else np.empty(0, np.int64), where)
    meta = {"format": STORE_FORMAT, "passages": count, "fingerprint": digest.hexdigest()[:16]}
    (folder / META_FILE).write_text(json.dumps(meta, indent=2), encoding="utf-8")
    log.info("passage store: %d passages written in %.1fs", count, time.perf_counter() - started)
    return meta


def _update_fingerprint(digest: Any, joined: Any) -> None:
    """Feed ``id\\0title\\0text\\0`` of every passage: the bytes ``corpus_fingerprint`` hashes, taken
    straight from the joined array's data buffer rather than encoded string by string."""
    import numpy as np

    if not len(joined):
        return
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[joined.offset: joined.offset + len(joined) + 1]
    digest.update(memoryview(joined.buffers()[2])[int(offsets[0]): int(offsets[-1])])


def _refuse_duplicates(path: Path, hashes: Any, where: Callable[[int], str]) -> None:
    """Raise for the first passage (in file order) whose id an earlier one has, naming both rows;
    only ids whose hashes are equal are read back and compared."""
    import numpy as np

    order = np.argsort(hashes, kind="stable")  # equal hashes stay in file order
    ranked = hashes[order]
    repeats = np.flatnonzero(ranked[1:] == ranked[:-1]) + 1  # positions whose hash the previous one has
    if not len(repeats):
        return
    batches = _mapped_batches(path)
    ends = np.cumsum([batch.num_rows for batch in batches])

    def id_at(index: int) -> str:
        b = int(ends.searchsorted(index, side="right"))
        return batches[b].column(0)[index - (int(ends[b - 1]) if b else 0)].as_py()

    for position in sorted(repeats, key=lambda p: order[p]):  # the earliest later occurrence first
        later = int(order[position])
        value = id_at(later)
        group = position
        while group > 0 and ranked[group - 1] == ranked[position]:
            group -= 1
        earlier = [int(order[p]) for p in range(group, position) if id_at(int(order[p])) == value]
        if earlier:
            raise DataError(f"{where(later)}: duplicate passage id {value!r} (first at {where(min(earlier))}; "
                            "each passage id must be unique)")


def store_key(path: Path, fmt: str, fields: dict[str, str]) -> str:
    """The store folder's name: the source file's identity and how it is read."""
    from slm_ray.store.fingerprints import stable_hash

    stat = path.stat()
    return stable_hash({"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                        "ctime_ns": stat.st_ctime_ns, "inode": stat.st_ino, "format": fmt, "fields": fields,
                        "store": STORE_FORMAT}, 16)


def open_store(source: Any, cache_dir: str | Path) -> PassageStore:
    """The store of ``source`` (a ``corpus_stream.CorpusSource``), written now if it is not cached
    (or fails its check). A bad row stops the write with its one-line error and leaves nothing:
    no staging folder (``load_or_build``), and neither the lock file nor the folders made for it,
    since a refused run writes nothing."""
    from slm_ray.store.cache_entry import load_or_build

    folder = Path(cache_dir) / "corpora" / store_key(source.path, source.fmt, source.fields)
    created = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    opened: list[PassageStore] = []
    try:
        load_or_build(folder, lambda staging: write_store(staging, source.chunks(), source.where),
                      load=lambda found: opened.append(PassageStore(found)), what="passage store")
    except DataError:
        (folder.parent / f".{folder.name}.lock").unlink(missing_ok=True)
        for made in created:  # deepest first; only if still empty
            try:
                made.rmdir()
            except OSError:
                break
        raise
    return opened[-1] if opened else PassageStore(folder)
