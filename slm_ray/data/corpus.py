"""Retrieval corpora: the built-in NQ corpus or a user's passages (JSONL/Parquet, a BEIR folder, a DPR file).

Every passage needs a non-empty text (an empty one can only be retrieved in place of a real one)
and a unique id (retrieval results and indexes are keyed by it); a bad row is refused with one line
naming it, as for datasets.
"""

from __future__ import annotations

import hashlib
import itertools
from pathlib import Path
from typing import Any

from slm_ray.data import beir, checks, dpr
from slm_ray.data.base import Passage
from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS
from slm_ray.data.checks import require_columns
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


def load_corpus(corpus_cfg: Any, cache_dir: str | Path) -> list[Passage]:
    """The passages of the ``corpus`` config section, every row checked: JSONL/Parquet passages
    (``id``/``title``/``text``, or FlashRAG's ``contents``), a BEIR folder or corpus.jsonl
    (``_id``), or a DPR-format JSON list (all its passages, deduplicated by text)."""
    if corpus_cfg.path == "builtin":
        return builtin_nq_corpus()
    path, display = corpus_file(corpus_cfg, cache_dir), corpus_cfg.path
    if Path(corpus_cfg.path).expanduser().is_dir():  # a BEIR folder
        display = f"{corpus_cfg.path.rstrip('/')}/{path.name}"
    fields = dict(corpus_cfg.fields)
    ids = checks.UniqueIds("passage id")
    passages: list[Passage] = []
    dpr_layout = False
    rows = iter_rows(path, corpus_cfg.format, display)
    for row in rows:
        if row.index == 0:
            if dpr.is_dpr(row.data):
                return list(dpr.corpus_passages(itertools.chain([row], rows)))
            if fields["id"] not in row.data and "_id" in row.data:
                fields["id"] = "_id"  # BEIR's name for it
            dpr_layout = fields["text"] not in row.data and "contents" in row.data
            if not dpr_layout:
                require_columns(display, row.data, {"text": fields["text"]}, section="corpus")
        if dpr_layout:
            passages.append(_dpr_passage(row, ids))
            continue
        text = checks.text(row, fields["text"], "text")
        title = checks.optional_text(row, fields["title"], "title")
        passages.append(Passage(_passage_id(row, fields["id"], ids), text, title))
    return passages


def corpus_fingerprint(passages: list[Passage]) -> str:
    """A hash of the corpus content: an index is reused only for the very same passages."""
    digest = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]
