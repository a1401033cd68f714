"""The records every dataset and corpus produce, and the dataset interface."""

from __future__ import annotations

import logging

import random
from abc import ABC, abstractmethod
from collections.abc import Generator
from contextlib import closing
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from slm_ray.logs import FILE_ONLY


log = logging.getLogger("slm_ray.data")


@dataclass(frozen=True)
class Passage:
    """One retrievable unit of text; ``title`` is rendered in prompts when present."""

    id: str
    text: str
    title: str = ""


@dataclass(frozen=True)
class QAExample:
    """A question with its gold answers and, where the dataset has one, its gold passage."""

    id: str
    question: str
    answers: tuple[str, ...]
    gold_passages: tuple[Passage, ...] = field(default=())


class BaseDataset(ABC):
    """A QA dataset. Subclasses read one source, checking each row as they go (slm_ray.data.checks);
    limiting and sampling live here, once."""

    #: Whether examples carry gold passages, i.e. whether ``oracle_context`` can be served.
    has_gold_context: bool = False

    def __init__(self, name: str, path: str, limit: int | None = None, sample: bool = False,
                 seed: int = 0, cache_dir: str = ".cache"):
        self.name = name
        self.path = path
        self.cache_dir = cache_dir
        self.limit = limit
        self.sample = sample
        self.seed = seed

    @classmethod
    def from_config(cls, dataset_cfg: Any, cache_dir: str) -> "BaseDataset":
        """Build from the ``dataset`` config section; subclasses with more keys extend this."""
        return cls(name=dataset_cfg.name, path=dataset_cfg.path, limit=dataset_cfg.limit,
                   sample=dataset_cfg.sample, seed=dataset_cfg.seed, cache_dir=cache_dir)

    @classmethod
    def supports_oracle(cls, dataset_cfg: Any) -> bool:
        """Whether ``oracle_context`` can be served; checked before anything is loaded."""
        return cls.has_gold_context

    @abstractmethod
    def iter_examples(self) -> Generator[QAExample, None, None]:
        """The examples of the source in file order, each row checked as it is read; an invalid
        row raises a one-line ``DataError`` naming it."""

    def read_all(self) -> list[QAExample]:
        """Every example of the source, in file order."""
        return list(self.iter_examples())

    def local_path(self, builtin: Path | None = None) -> Path:
        """The file to read: the packaged one for ``path: builtin``, else local or fetched from s3."""
        if self.path == "builtin" and builtin is not None:
            return builtin
        from slm_ray.data.storage import resolve_path

        return resolve_path(self.path, Path(self.cache_dir) / "datasets")

    def display_name(self, builtin: Path | None = None) -> str:
        """The name errors use: the path as the user typed it, an ``s3://`` URI rather than the
        cache copy ``local_path`` reads (which the user never saw), the packaged file for builtin."""
        if self.path == "builtin" and builtin is not None:
            return str(builtin)
        return self.path

    def load(self) -> list[QAExample]:
        """The examples of this run: the first ``limit``, or a seeded sample of ``limit``.

        The first ``limit`` are read (and checked) up to the last one used: a bad row further on
        does not fail a run that never uses it. A sample is drawn over every row, so every row is
        read and checked first.
        """
        if self.limit is not None and not self.sample:
            with closing(self.iter_examples()) as rows:
                examples = list(islice(rows, self.limit))
        else:
            examples = self.read_all()
            if self.limit is not None and self.limit < len(examples):
                chosen = sorted(random.Random(self.seed).sample(range(len(examples)), self.limit))
                examples = [examples[i] for i in chosen]
        log.info("dataset %s: %d examples from %s", self.name, len(examples),
                 "the packaged file" if self.path == "builtin" else self.path, extra=FILE_ONLY)
        return examples
