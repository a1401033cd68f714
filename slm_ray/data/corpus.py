"""Retrieval corpora: the built-in NQ corpus or a user's passages (JSONL/Parquet/TSV, a BEIR folder, a DPR file).

Every passage needs a non-empty text (an empty one can only be retrieved in place of a real one)
and a unique id (retrieval results and indexes are keyed by it); a bad row is refused with one line
naming it, as for datasets.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slm_ray.data import beir, checks, dpr
from slm_ray.data.base import Passage
from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS
from slm_ray.data.nq import gold_context
from slm_ray.data.readers import Row, iter_rows
from slm_ray.errors import DataError


def _split_dpr_contents(contents: str) -> tuple[str, str]:
    """DPR/FlashRAG ``"Title"\\ntext`` into (title, text)."""
    first, _, rest = contents.partition("\n")
    return first.strip().strip('"'), rest.strip()


def _dpr_passage(row: Row, ids: checks.UniqueIds, id_prefix: str = "") -> Passage:
    """A passage of the DPR/FlashRAG layout: ``contents`` is the title line, then the text."""
    title, text = _split_dpr_contents(checks.text(row, "contents"))
    if not text:
        raise DataError(f"{row.where}: 'contents' has no text after its title line "
                        '(expected "Title" on the first line, the passage text after it)')
    return Passage(_passage_id(row, "id", ids, id_prefix), text, title)


def _passage_id(row: Row, column: str, ids: checks.UniqueIds, prefix: str = "") -> str:
    """The row's id, or its record number when the row has no id key; unique in the corpus."""
    value = checks.field(row, column)
    passage_id = prefix + (str(row.index) if value is checks.MISSING else checks.identifier(row, column, "id"))
    ids.add(passage_id, row)
    return passage_id


def builtin_nq_corpus() -> list[Passage]:
    """The distinct NQ gold passages followed by the 1,000 Wikipedia distractors."""
    passages: list[Passage] = []
    seen: set[str] = set()
    for row in iter_rows(NQ_OPEN_ORACLE, "jsonl"):
        gold = gold_context(row)
        if gold and gold[1] not in seen:
            seen.add(gold[1])
            passages.append(Passage(id=f"nq-gold-{len(passages)}", text=gold[1], title=gold[0]))
    ids = checks.UniqueIds("passage id")
    passages += [_dpr_passage(row, ids, "wiki-") for row in iter_rows(WIKI_DISTRACTORS, "jsonl")]
    return passages


def corpus_file(corpus_cfg: Any, cache_dir: str | Path) -> Path:
    """The local file of a ``corpus=file`` corpus: the file itself (an ``s3://`` one fetched), or a
    BEIR folder's corpus.jsonl."""
    from slm_ray.data.storage import resolve_path

    path = resolve_path(corpus_cfg.path, Path(cache_dir) / "datasets")
    return beir.corpus_file(path, corpus_cfg.path) if path.is_dir() else path


def load_corpus(corpus_cfg: Any, cache_dir: str | Path) -> Sequence[Passage]:
    """The passages of the ``corpus`` config section, every row checked: JSONL/Parquet/TSV passages
    (``id``/``title``/``text``, or FlashRAG's ``contents``; DPR's ``psgs_w100.tsv`` as it comes), a
    BEIR folder or corpus.jsonl (``_id``), or a DPR-format JSON list (all its passages,
    deduplicated by text).

    A list for the built-in corpus (3,600 passages) and a DPR JSON list (a training file, read whole
    as always); any other file streams once into a memory-mapped ``PassageStore`` under
    ``<cache_dir>/corpora/``, which later runs open without reading the file again. Both are
    ``Sequence[Passage]`` with the same ``corpus_fingerprint``.
    """
    from slm_ray.data.corpus_stream import CorpusSource
    from slm_ray.data.passage_store import open_store
    from slm_ray.data.readers import detect_format

    if corpus_cfg.path == "builtin":
        return builtin_nq_corpus()
    path, display = corpus_file(corpus_cfg, cache_dir), corpus_cfg.path
    if Path(corpus_cfg.path).expanduser().is_dir():  # a BEIR folder
        display = f"{corpus_cfg.path.rstrip('/')}/{path.name}"
    fmt = detect_format(path, corpus_cfg.format, display)
    if fmt == "jsonl" and _is_json_list(path, display):
        rows = iter_rows(path, fmt, display)
        first = next(rows)
        if dpr.is_dpr(first.data):
            return list(dpr.corpus_passages(itertools.chain([first], rows)))
    if not path.is_file():
        raise DataError(f"data file not found: {display}")
    return open_store(CorpusSource(path, fmt, dict(corpus_cfg.fields), display), cache_dir)


def _is_json_list(path: Path, display: str) -> bool:
    """Whether a JSONL-named file is one JSON list (DPR's layout), from its first non-blank byte."""
    from slm_ray.data.readers import open_bytes

    if not path.is_file():
        return False
    with open_bytes(path, display) as handle:
        while chunk := handle.read(1 << 12):
            if chunk.strip():
                return chunk.lstrip()[:1] == b"["
    return False


def corpus_fingerprint(passages: Sequence[Passage]) -> str:
    """A hash of the corpus content: an index is reused only for the very same passages. A
    ``PassageStore`` computed it once, from the same bytes, when it was written."""
    known = getattr(passages, "fingerprint", None)
    if isinstance(known, str):
        return known
    digest = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]
