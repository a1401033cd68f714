"""A user's own questions: a JSONL, CSV or Parquet file, local or on S3, its columns mapped in YAML;
also DPR-format JSON (slm_ray.data.dpr) and BEIR folders (slm_ray.data.beir) as they come.

Reading (and naming where a row is) lives in slm_ray.data.readers, what each value must be in
slm_ray.data.checks; ``iter_jsonl`` and ``detect_format`` are re-exported for older imports.
"""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

from slm_ray.data import beir, checks, dpr
from slm_ray.data.base import BaseDataset, Passage, QAExample
from slm_ray.data.checks import require_columns
from slm_ray.data.readers import FORMATS, detect_format, iter_jsonl, iter_rows
from slm_ray.config import DATASET_FIELDS

__all__ = ["FORMATS", "FileDataset", "detect_format", "iter_jsonl"]


class FileDataset(BaseDataset):
    """A user's own questions: JSONL/CSV/Parquet, local or ``s3://``, columns mapped in YAML.

    Each row needs a non-empty question and at least one answer (see slm_ray.data.checks for what
    an answer may be); the id column (mapped, or ``id`` when the file has one) must hold unique,
    non-empty ids; a mapped context column may be blank or null in a row, which then has no gold
    passage. A DPR record's gold passage is its first positive passage.
    """

    def __init__(self, name: str, path: str, fields: dict[str, str], fmt: str = "auto",
                 limit: int | None = None, sample: bool = False, seed: int = 0, cache_dir: str = ".cache",
                 split: str | None = None):
        super().__init__(name, path, limit, sample, seed, cache_dir)
        self.format = fmt
        self.fields = {**DATASET_FIELDS, **fields}
        self.split = split

    @classmethod
    def from_config(cls, dataset_cfg: Any, cache_dir: str) -> "FileDataset":
        return cls(name=dataset_cfg.name, path=dataset_cfg.path, fields=dict(dataset_cfg.fields),
                   fmt=dataset_cfg.format, limit=dataset_cfg.limit, sample=dataset_cfg.sample,
                   seed=dataset_cfg.seed, cache_dir=cache_dir, split=dataset_cfg.split)

    @classmethod
    def supports_oracle(cls, dataset_cfg: Any) -> bool:
        """A mapped context column, a BEIR folder (gold passages from its qrels) or a DPR file
        (first positive passages). Only a local file is looked into; an ``s3://`` one is fetched
        later, when the run starts."""
        if dataset_cfg.fields.get("context"):
            return True
        path = Path(dataset_cfg.path).expanduser()
        if "://" in dataset_cfg.path or not path.exists():
            return False
        return path.is_dir() or dpr.looks_like_dpr(path)

    def iter_examples(self) -> Generator[QAExample, None, None]:
        display = self.display_name()
        path = self.local_path()
        if path.is_dir():
            yield from beir.iter_examples(path, display, self.split)
            return
        question_col, answers_col = self.fields["question"], self.fields["answers"]
        id_col, context_col, title_col = self.fields.get("id"), self.fields.get("context"), self.fields.get("title")
        dpr_layout = False
        ids = checks.UniqueIds()
        for row in iter_rows(path, self.format, display):
            if row.index == 0:
                require_columns(display, row.data, {"question": question_col, "answers": answers_col,
                                                    "id": id_col, "context": context_col, "title": title_col})
                id_col = id_col or ("id" if "id" in row.data else None)  # a file's own ids, when it has them
                dpr_layout = context_col is None and dpr.is_dpr(row.data)
            example_id = checks.identifier(row, id_col, "id") if id_col else f"{self.name}-{row.index}"
            ids.add(example_id, row)
            question = checks.text(row, question_col, "question")
            answers = checks.answers(row, answers_col, "answers")
            if dpr_layout:
                yield QAExample(example_id, question, answers, dpr.gold_passages(row))
                continue
            title = checks.optional_text(row, title_col, "title") if title_col else ""
            context = checks.optional_text(row, context_col, "context") if context_col else ""
            gold = (Passage(id=f"{example_id}-gold", text=context, title=title),) if context.strip() else ()
            yield QAExample(example_id, question, answers, gold)
