"""Reading records from JSONL, CSV and Parquet files, and the generic file dataset.

Errors name the file, the line or column, and what was expected, so that a malformed user file
is fixed in one go rather than debugged from a traceback.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Iterator

from slm_ray.data.base import BaseDataset, Passage, QAExample
from slm_ray.errors import DataError

FORMATS = ("jsonl", "csv", "parquet")


def detect_format(path: Path, declared: str = "auto") -> str:
    """The declared format, or the one the extension says (``.gz`` is looked through)."""
    if declared != "auto":
        return declared
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    ext = {"json": "jsonl", "ndjson": "jsonl", "pq": "parquet"}.get(ext, ext)
    if ext not in FORMATS:
        raise DataError(f"cannot tell the format of {path} from its extension (valid: .jsonl, .csv, .parquet, or set format)")
    return ext


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else open(path, encoding="utf-8")


def iter_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Objects of a JSONL file (gzip allowed); blank lines skipped, a bad line named."""
    with _open_text(path) as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{line_no}: malformed JSON line ({exc.msg})") from None
            if not isinstance(record, dict):
                raise DataError(f"{path}:{line_no}: expected a JSON object, got {type(record).__name__}")
            yield record


def read_records(path: Path, fmt: str = "auto") -> list[dict[str, Any]]:
    """All records of a JSONL/CSV/Parquet file as dicts; an empty file is an error."""
    if not path.is_file():
        raise DataError(f"data file not found: {path}")
    fmt = detect_format(path, fmt)
    if fmt == "jsonl":
        records = list(iter_jsonl(path))
    else:
        import pandas as pd

        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False) if fmt == "csv" else pd.read_parquet(path)
        except Exception as exc:  # pandas raises many types for unreadable files
            raise DataError(f"cannot read {path} as {fmt}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
        records = frame.to_dict(orient="records")
    if not records:
        raise DataError(f"{path} holds no records")
    return records


def require_columns(path: Path, record: dict[str, Any], columns: dict[str, str | None]) -> None:
    """Fail on the first record if a mapped column is missing, listing the columns that exist."""
    for role, column in columns.items():
        if column is not None and column not in record:
            raise DataError(
                f"{path}: no column {column!r} for {role} (columns: {', '.join(map(str, record))}; "
                f"map yours with dataset.fields.{role}=...)"
            )


def as_answer_list(value: Any) -> tuple[str, ...]:
    """Answers given as a list, a JSON list in a string, or ``a|b`` in one string."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                return (text,)
        else:
            return tuple(a.strip() for a in text.split("|") if a.strip())
    if hasattr(value, "tolist"):
        value = value.tolist()
    return tuple(str(a) for a in value if str(a).strip())


class FileDataset(BaseDataset):
    """A user's own questions: JSONL/CSV/Parquet, local or ``s3://``, columns mapped in YAML."""

    def __init__(self, name: str, path: str, fields: dict[str, str], fmt: str = "auto",
                 limit: int | None = None, sample: bool = False, seed: int = 0, cache_dir: str = ".cache"):
        super().__init__(name, path, limit, sample, seed, cache_dir)
        self.format = fmt
        self.fields = {"question": "question", "answers": "answers", **fields}

    @classmethod
    def from_config(cls, dataset_cfg: Any, cache_dir: str) -> "FileDataset":
        return cls(name=dataset_cfg.name, path=dataset_cfg.path, fields=dict(dataset_cfg.fields),
                   fmt=dataset_cfg.format, limit=dataset_cfg.limit, sample=dataset_cfg.sample,
                   seed=dataset_cfg.seed, cache_dir=cache_dir)

    @classmethod
    def supports_oracle(cls, dataset_cfg: Any) -> bool:
        return bool(dataset_cfg.fields.get("context"))

    def read_all(self) -> list[QAExample]:
        local = self.local_path()
        records = read_records(local, self.format)
        id_col, context_col = self.fields.get("id"), self.fields.get("context")
        require_columns(local, records[0], {"question": self.fields["question"], "answers": self.fields["answers"],
                                            "id": id_col, "context": context_col, "title": self.fields.get("title")})
        examples = []
        for row_no, record in enumerate(records):
            example_id = str(record[id_col]) if id_col else f"{self.name}-{row_no}"
            gold: tuple[Passage, ...] = ()
            if context_col and str(record[context_col]).strip():
                title = str(record[self.fields["title"]]) if self.fields.get("title") else ""
                gold = (Passage(id=f"{example_id}-gold", text=str(record[context_col]), title=title),)
            examples.append(QAExample(example_id, str(record[self.fields["question"]]),
                                      as_answer_list(record[self.fields["answers"]]), gold))
        return examples
