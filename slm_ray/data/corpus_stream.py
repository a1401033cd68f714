"""A corpus file read as checked chunks of passages, never whole: what a passage store is written from.

JSONL comes line by line (``readers.iter_rows``), Parquet by row groups (``iter_batches``) and TSV
by blocks of pyarrow's streaming CSV reader, each gathered into chunks of ``CHUNK_ROWS`` passages.
Every row is checked as ``load_corpus`` always checked it (a non-empty text, an id or its record
number, an optional title; FlashRAG's ``contents`` split into title and text), with the same one-line
errors; only the uniqueness of ids is left to the store, which checks it without a set of strings.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Any

from slm_ray.config import CORPUS_FIELDS
from slm_ray.data import checks
from slm_ray.data.readers import Row, is_gzip, iter_rows, iter_tsv_batches, open_bytes, tsv_where
from slm_ray.errors import DataError

CHUNK_ROWS = 65_536  # passages checked and written at a time: ~40 MB of Wikipedia text


@dataclass(frozen=True)
class Chunk:
    """Checked passages ``start .. start + len(ids)`` of the file, as three parallel columns."""

    start: int
    ids: list[str]
    titles: list[str]
    texts: list[str]


@dataclass(frozen=True)
class _Layout:
    """Which columns hold what, decided on the first record (or the schema) as ``load_corpus`` does."""

    id: str
    title: str
    text: str
    contents: bool  # FlashRAG/DPR ``contents``: the title line, then the text


def _layout(display: str, columns: list[str], fields: dict[str, str]) -> _Layout:
    fields = {**CORPUS_FIELDS, **fields}  # a CorpusConfig's map is complete; a hand-made source's may not be
    id_column = "_id" if fields["id"] not in columns and "_id" in columns else fields["id"]  # BEIR's name
    contents = fields["text"] not in columns and "contents" in columns
    if not contents:
        checks.require_columns(display, dict.fromkeys(columns), {"text": fields["text"]}, section="corpus")
    return _Layout(id_column, fields["title"], fields["text"], contents)


def _split_contents(contents: str) -> tuple[str, str]:
    """DPR/FlashRAG ``"Title"\\ntext`` into (title, text)."""
    first, _, rest = contents.partition("\n")
    return first.strip().strip('"'), rest.strip()


def check_columns(start: int, columns: dict[str, list[Any]], n: int, layout: _Layout,
                  where: Callable[[int], str]) -> Chunk:
    """Check ``n`` records given as columns (a missing column or key is ``checks.MISSING``); the
    first bad one raises its one-line ``DataError``. The common case costs a type test per value."""
    missing = [checks.MISSING] * n
    raw_ids = columns.get(layout.id, missing)
    ids, titles, texts = [], [], []
    id_name = checks.label(layout.id, "id")
    if layout.contents:
        for i, value in enumerate(columns.get("contents", missing)):
            value = checks.text_value(where(start + i), checks.label("contents"), value)
            title, text = _split_contents(value)
            if not text:
                raise DataError(f"{where(start + i)}: 'contents' has no text after its title line "
                                '(expected "Title" on the first line, the passage text after it)')
            titles.append(title)
            texts.append(text)
    else:
        text_name, title_name = checks.label(layout.text, "text"), checks.label(layout.title, "title")
        for i, (text, title) in enumerate(zip(columns.get(layout.text, missing), columns.get(layout.title, missing))):
            if not (type(text) is str and text.strip()):
                text = checks.text_value(where(start + i), text_name, text)
            if type(title) is not str:
                title = checks.optional_text_value(where(start + i), title_name, title)
            texts.append(text)
            titles.append(title)
    for i, value in enumerate(raw_ids):
        if type(value) is str and value.strip():
            ids.append(value)
        elif value is checks.MISSING:
            ids.append(str(start + i))  # no id: the record number, as load_corpus always named it
        else:
            ids.append(checks.identifier_value(where(start + i), id_name, value))
    return Chunk(start, ids, titles, texts)


class CorpusSource:
    """One corpus file, read as checked ``Chunk``s; ``where(index)`` names a record for messages."""

    def __init__(self, path: Path, fmt: str, fields: dict[str, str], display: str):
        self.path, self.fmt, self.fields, self.display = path, fmt, dict(fields), display

    def chunks(self) -> Iterator[Chunk]:
        reader = {"jsonl": self._jsonl, "parquet": self._parquet, "tsv": self._tsv}.get(self.fmt)
        if reader is None:
            raise DataError(f"corpus format {self.fmt!r} cannot be streamed (valid: jsonl, parquet, tsv)")
        count = 0
        for chunk in reader():
            count += len(chunk.ids)
            yield chunk
        if not count:
            raise DataError(f"{self.display} holds no records")

    def where(self, index: int) -> str:
        """Where record ``index`` is (a JSONL file is read again up to it: this names errors only)."""
        if self.fmt == "tsv":
            return tsv_where(self.display, index)
        if self.fmt == "parquet":
            return f"{self.display}: row {index + 1}"
        row = next(islice(iter_rows(self.path, "jsonl", self.display), index, None))
        return row.where

    def _jsonl(self) -> Iterator[Chunk]:
        layout: _Layout | None = None
        rows = iter_rows(self.path, "jsonl", self.display)
        while True:
            batch: list[Row] = list(islice(rows, CHUNK_ROWS))
            if not batch:
                return
            if layout is None:
                layout = _layout(self.display, list(batch[0].data), self.fields)
            names = {layout.id, layout.title, layout.text, "contents"}
            columns = {name: [row.data.get(name, checks.MISSING) for row in batch] for name in names}
            start = batch[0].index
            yield check_columns(start, columns, len(batch), layout, lambda i: batch[i - start].where)

    def _parquet(self) -> Iterator[Chunk]:
        import pyarrow as pa
        import pyarrow.parquet as pq

        with open_bytes(self.path, self.display) as handle:
            # Parquet seeks to its footer: a gzip-compressed one is decompressed into memory first
            data = io.BytesIO(handle.read()) if is_gzip(self.path, self.display) and not isinstance(
                handle, io.BytesIO) else handle
            try:
                parquet = pq.ParquetFile(data)
                names = parquet.schema_arrow.names
                batches = parquet.iter_batches(batch_size=CHUNK_ROWS)
                start = 0
                layout = None
                for batch in batches:
                    layout = layout or _layout(self.display, names, self.fields)
                    columns = {name: batch.column(name).to_pylist() for name in names
                               if name in (layout.id, layout.title, layout.text, "contents")}
                    yield check_columns(start, columns, batch.num_rows, layout, self.where)
                    start += batch.num_rows
            except (pa.ArrowException, OSError) as exc:
                message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise DataError(f"{self.display}: not a readable Parquet file "
                                f"({message.replace(str(self.path), self.display)})") from None

    def _tsv(self) -> Iterator[Chunk]:
        start = 0
        layout = None
        pending: list[Any] = []
        pending_rows = 0
        for batch in iter_tsv_batches(self.path, self.display):
            layout = layout or _layout(self.display, batch.schema.names, self.fields)
            pending.append(batch)
            pending_rows += batch.num_rows
            if pending_rows >= CHUNK_ROWS:
                yield self._tsv_chunk(start, pending, layout)
                start += pending_rows
                pending, pending_rows = [], 0
        if pending_rows:
            yield self._tsv_chunk(start, pending, layout)

    def _tsv_chunk(self, start: int, batches: list[Any], layout: _Layout) -> Chunk:
        names = batches[0].schema.names
        wanted = [name for name in names if name in (layout.id, layout.title, layout.text, "contents")]
        columns = {name: [value for batch in batches for value in batch.column(name).to_pylist()] for name in wanted}
        return check_columns(start, columns, sum(b.num_rows for b in batches), layout, self.where)
