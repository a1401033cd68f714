"""Reading a data file into located rows: JSONL, CSV, TSV or Parquet, gzip-compressed or not.

Every row carries where it came from (``qa.jsonl:7``, ``qa.csv:12`` with the header as line 1,
``qa.parquet: row 3``, ``psgs.tsv:5`` likewise) under the name the user gave: the path as typed,
or the ``s3://`` URI rather than its cache copy. So whatever is wrong with a row can be reported as one line that points at it.

Rows come lazily and in file order, so a run that uses the first N rows parses no further. Two
exceptions, both for correctness: a gzip file is decompressed whole before its first row is used,
since only its checksum at the end tells corrupt data from good; Parquet, being columnar, is loaded
whole (but turned into rows only as far as they are used). Bytes that are
not what the file claims to be (not UTF-8, a truncated or corrupt gzip, a ``.gz`` that is not gzip,
CSV with an unclosed quote, a Parquet file that is not one) become one-line ``DataError``s.

Gzip is recognised by its content, so ``qa.jsonl`` that is really compressed reads fine; a name
ending in ``.gz`` promises gzip and is refused when the content is not.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import re
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from slm_ray.errors import DataError

FORMATS = ("jsonl", "csv", "parquet", "tsv")
GZIP_MAGIC = b"\x1f\x8b"
GZIP_IN_MEMORY_MAX = 16 << 20  # compressed bytes; a bigger gzip file is checked in a streaming pass first
PARQUET_CHUNK_ROWS = 1024  # rows turned into dicts at a time: a limited run converts only what it uses
_LONE_CR = re.compile(rb"(?<=\r)(?!\n)")  # a line break of old Mac files; Python's text mode splits there too
_GZIP_ERRORS = (EOFError, zlib.error, gzip.BadGzipFile)


@dataclass(frozen=True, slots=True)
class Row:
    """One record of a file and where it is; ``index`` counts records from 0 (blank lines do not
    count) and is what default ids such as ``nq-<index>`` are built from."""

    where: str
    index: int
    data: dict[str, Any]


def detect_format(path: Path, declared: str = "auto", display: str | None = None) -> str:
    """The declared format, or the one the extension says (``.gz`` is looked through)."""
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    ext = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(ext, ext)
    if ext not in FORMATS:
        raise DataError(f"cannot tell the format of {display or path} from its extension "
                        "(valid: .jsonl, .csv, .tsv, .parquet, or set format)")
    return ext


def iter_rows(path: Path, fmt: str = "auto", display: str | None = None) -> Iterator[Row]:
    """The records of a JSONL/CSV/Parquet file as located rows; a file without any is an error.

    ``display`` is the name errors use (defaults to ``path``): pass what the user typed.
    """
    display = display or str(path)
    if not path.is_file():
        raise DataError(f"data file not found: {display}")
    fmt = detect_format(path, fmt, display)
    reader = {"jsonl": _jsonl_rows, "csv": _csv_rows, "parquet": _parquet_rows, "tsv": _tsv_rows}[fmt]
    count = 0
    for row in reader(path, display):
        count += 1
        yield row
    if not count:
        raise DataError(f"{display} holds no records")


def iter_jsonl(path: Path, display: str | None = None) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file (gzip allowed); blank lines skipped, a bad line named."""
    for row in _jsonl_rows(path, display or str(path)):
        yield row.data


def is_gzip(path: Path, display: str | None = None) -> bool:
    """Whether the file's content is gzip, whatever its name says."""
    try:
        with open(path, "rb") as raw:
            return raw.read(2) == GZIP_MAGIC
    except OSError as exc:  # unreadable: permissions, a folder, a vanished file
        raise DataError(f"cannot read {display or path}: {exc.strerror or exc}") from None


@contextmanager
def open_bytes(path: Path, display: str) -> Iterator[IO[bytes]]:
    """The file's bytes, decompressed when they are gzip; a ``.gz`` name without gzip is refused."""
    if is_gzip(path, display):
        with _checked_gunzip(path, display) as stream:
            yield stream
        return
    if path.name.lower().endswith(".gz"):
        raise DataError(f"{display}: named .gz but not gzip-compressed "
                        "(rename it without .gz, or compress it with gzip)")
    with open(path, "rb") as raw:
        yield raw


def _checked_gunzip(path: Path, display: str) -> IO[bytes]:
    """A gzip file's content, every byte decompressed and its checksum checked before a row is read.

    gzip checks its CRC only at the end of the stream, and corrupt data can decompress into rows
    that look fine until then: a run limited to the first rows would never get there and would read
    wrong rows. Files up to ``GZIP_IN_MEMORY_MAX`` are decompressed once, into memory; larger ones
    are decompressed twice (checked, then streamed) to keep memory bounded.
    """
    try:
        if path.stat().st_size <= GZIP_IN_MEMORY_MAX:
            return io.BytesIO(gzip.decompress(path.read_bytes()))
        with gzip.open(path, "rb") as stream:
            while stream.read(1 << 20):
                pass
    except _GZIP_ERRORS as exc:
        raise DataError(_gzip_problem(display, exc)) from None
    # An outer buffer makes line iteration C-speed: GzipFile.readline is Python per line.
    return io.BufferedReader(gzip.GzipFile(path, "rb"), 1 << 16)


def _gzip_problem(display: str, exc: BaseException, lines_read: int | None = None) -> str:
    """One line for a gzip stream that breaks off or does not decompress."""
    where = f" after line {lines_read}" if lines_read else ""
    if isinstance(exc, EOFError):
        return f"{display}: gzip data ends early{where} (the file is truncated: copy or download it again)"
    return f"{display}: corrupt gzip data{where} ({exc}; copy or download the file again)"


def _text_lines(handle: IO[bytes], display: str) -> Iterator[tuple[int, str]]:
    """Numbered lines (from 1, ending kept), split where Python's universal newlines split and
    decoded one at a time, so a byte that is not UTF-8 is reported on its own line."""
    raw_lines = iter(handle)
    line_no = 0
    while True:
        try:
            raw = next(raw_lines)
        except StopIteration:
            return
        except _GZIP_ERRORS as exc:
            raise DataError(_gzip_problem(display, exc, line_no)) from None
        for part in _LONE_CR.split(raw) if b"\r" in raw else (raw,):
            if not part:
                continue
            line_no += 1
            if b"\x00" in part:  # text files hold no NUL bytes; binary files (Parquet, xlsx) and UTF-16 do
                raise DataError(f"{display}:{line_no}: holds a NUL byte, so it is not UTF-8 text "
                                "(a binary file, or text saved as UTF-16? save it as UTF-8)")
            try:
                text = part.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{display}:{line_no}: not valid UTF-8 (byte 0x{part[exc.start]:02x} at byte "
                                f"{exc.start + 1} of the line; save the file as UTF-8)") from None
            if line_no == 1 and text.startswith("\ufeff"):  # a byte-order mark some editors write
                text = text[1:]
            yield line_no, text


def _jsonl_rows(path: Path, display: str) -> Iterator[Row]:
    """JSON Lines; a file whose first non-blank character is ``[`` is one JSON list of objects
    instead (the DPR training-data layout), its rows named by list index: ``data.json[3]``."""
    with open_bytes(path, display) as handle:
        index = 0
        lines = _text_lines(handle, display)
        for line_no, line in lines:
            if not line.strip():
                continue
            if index == 0 and line.lstrip().startswith("["):
                yield from _json_list_rows(line + "".join(rest for _, rest in lines), display)
                return
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{display}:{line_no}: malformed JSON line ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{display}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield Row(f"{display}:{line_no}", index, record)
            index += 1


def _json_list_rows(text: str, display: str) -> Iterator[Row]:
    """The objects of a JSON list, each named ``file[index]``."""
    try:
        records = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{display}:{exc.lineno}: malformed JSON ({exc.msg}; the file starts with '[', "
                        "so it is read as one JSON list)") from None
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise DataError(f"{display}[{index}]: expected a JSON object, got {type(record).__name__}")
        yield Row(f"{display}[{index}]", index, record)


def _csv_header(cells: list[str]) -> list[str]:
    """Column names as pandas gives them: blanks named ``Unnamed: i``, repeats ``name.1``, ..."""
    names: list[str] = []
    for i, cell in enumerate(cells):
        name = cell or f"Unnamed: {i}"
        if name in names:
            k = 1
            while f"{name}.{k}" in names or f"{name}.{k}" in cells:
                k += 1
            name = f"{name}.{k}"
        names.append(name)
    return names


def _csv_rows(path: Path, display: str) -> Iterator[Row]:
    """CSV rows as string dicts, matching what pandas made of valid files before (blank lines
    skipped, short rows padded with empty cells) but refusing what pandas half-read or choked on."""
    csv.field_size_limit(max(csv.field_size_limit(), min(sys.maxsize, 2**31 - 1)))  # long passages
    with open_bytes(path, display) as handle:
        source = _Exhaustible(_text_lines(handle, display))
        reader = csv.reader(source)
        header: list[str] | None = None
        index, last_line, header_line = 0, 0, 0
        while True:
            try:
                cells = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                raise DataError(f"{display}:{last_line + 1}: not valid CSV ({exc})") from None
            start, last_line = last_line + 1, reader.line_num
            if source.exhausted:
                raise DataError(f"{display}:{start}: a quoted value that starts on this line is never closed "
                                '(a stray " ?)')
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # a blank line
            if header is None:
                header, header_line = _csv_header(cells), start
                continue
            if len(cells) > len(header):
                raise DataError(f"{display}:{start}: {len(cells)} cells but the header (line {header_line}) has "
                                f"{len(header)} (quote values that contain a comma)")
            cells += [""] * (len(header) - len(cells))
            yield Row(f"{display}:{start}", index, dict(zip(header, cells)))
            index += 1


class _Exhaustible:
    """Wraps an iterator and remembers that it ran out, which tells the CSV reader's unclosed
    quote at the end of the file apart from a closed one (the reader itself accepts both)."""

    def __init__(self, lines: Iterator[tuple[int, str]]):
        self._lines = lines
        self.exhausted = False

    def __iter__(self) -> "_Exhaustible":
        return self

    def __next__(self) -> str:
        try:
            return next(self._lines)[1]
        except StopIteration:
            self.exhausted = True
            raise


def _parquet_rows(path: Path, display: str) -> Iterator[Row]:
    import pandas as pd

    with open_bytes(path, display) as handle:
        try:
            seekable = isinstance(handle, io.BytesIO) or not is_gzip(path, display)  # Parquet seeks to its footer
            data = handle if seekable else io.BytesIO(handle.read())
        except _GZIP_ERRORS as exc:
            raise DataError(_gzip_problem(display, exc)) from None
        try:
            frame = pd.read_parquet(data)
        except Exception as exc:  # pyarrow raises many types for files that are not Parquet
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            message = message.split("input source '<Buffer>': ")[-1]
            raise DataError(f"{display}: not a readable Parquet file ({message.replace(str(path), display)})") from None
    for start in range(0, len(frame), PARQUET_CHUNK_ROWS):
        for offset, record in enumerate(frame.iloc[start : start + PARQUET_CHUNK_ROWS].to_dict(orient="records")):
            index = start + offset
            yield Row(f"{display}: row {index + 1}", index, record)


TSV_BLOCK_BYTES = 8 << 20  # bytes pyarrow parses at a time: a 13 GB psgs_w100.tsv streams through this


def tsv_where(display: str, index: int) -> str:
    """Where record ``index`` of a TSV file is: its line, the header being line 1 (one record per
    line, as DPR's psgs_w100.tsv has; values holding a line break are refused by the reader)."""
    return f"{display}:{index + 2}"


def iter_tsv_batches(path: Path, display: str, block_bytes: int = TSV_BLOCK_BYTES) -> Iterator[Any]:
    """The records of a tab-separated file with a header line (DPR's ``id\ttext\ttitle``), as
    pyarrow RecordBatches of strings, parsed block by block: never the whole file in memory.

    Values may be quoted as DPR quotes them (``"a ""b"" c"``); every column is read as text, so an
    id such as ``007`` stays ``007``. A malformed line is one ``DataError``.
    """
    import pyarrow as pa
    from pyarrow import csv as pacsv

    with open_bytes(path, display) as handle:
        header = handle.readline().decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n")
    names = [name.strip('"') for name in header.split("\t")]
    if not header.strip():
        raise DataError(f"{display} holds no records (expected a header line such as id<TAB>text<TAB>title)")
    read = pacsv.ReadOptions(block_size=block_bytes, skip_rows=1, column_names=names, encoding="utf8")
    parse = pacsv.ParseOptions(delimiter="\t", quote_char='"', double_quote=True, newlines_in_values=False)
    convert = pacsv.ConvertOptions(column_types={name: pa.string() for name in names}, strings_can_be_null=False,
                                   quoted_strings_can_be_null=False)
    rows_read = 0
    with open_bytes(path, display) as handle:
        try:
            reader = pacsv.open_csv(handle, read_options=read, parse_options=parse, convert_options=convert)
            for batch in reader:
                rows_read += batch.num_rows
                yield batch
        except (pa.ArrowInvalid, UnicodeDecodeError) as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{display}: not valid TSV after line {rows_read + 1} ({message}; expected "
                            f"{len(names)} tab-separated values per line, as in the header)") from None
        except _GZIP_ERRORS as exc:
            raise DataError(_gzip_problem(display, exc)) from None


def _tsv_rows(path: Path, display: str) -> Iterator[Row]:
    """TSV records as string dicts (a corpus reads the batches themselves: ``iter_tsv_batches``)."""
    index = 0
    for batch in iter_tsv_batches(path, display):
        for record in batch.to_pylist():
            yield Row(tsv_where(display, index), index, record)
            index += 1
