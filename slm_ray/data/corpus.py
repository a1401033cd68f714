"""Retrieval corpora: the built-in NQ corpus or a user's JSONL/Parquet passages."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from slm_ray.data.base import Passage
from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS
from slm_ray.data.files import iter_jsonl, read_records, require_columns
from slm_ray.errors import DataError


def _split_dpr_contents(contents: str) -> tuple[str, str]:
    """DPR/FlashRAG ``"Title"\\ntext`` into (title, text)."""
    first, _, rest = contents.partition("\n")
    return first.strip().strip('"'), rest.strip()


def builtin_nq_corpus() -> list[Passage]:
    """The distinct NQ gold passages followed by the 1,000 Wikipedia distractors."""
    passages: list[Passage] = []
    seen: set[str] = set()
    for record in iter_jsonl(NQ_OPEN_ORACLE):
        for ctx in record["ctxs"][:1]:
            if ctx["text"] not in seen:
                seen.add(ctx["text"])
                passages.append(Passage(id=f"nq-gold-{len(passages)}", text=ctx["text"], title=ctx.get("title", "")))
    for record in iter_jsonl(WIKI_DISTRACTORS):
        title, text = _split_dpr_contents(record["contents"])
        passages.append(Passage(id=f"wiki-{record['id']}", text=text, title=title))
    return passages


def load_corpus(corpus_cfg: Any, cache_dir: str | Path) -> list[Passage]:
    """The passages of the ``corpus`` config section."""
    if corpus_cfg.path == "builtin":
        return builtin_nq_corpus()
    from slm_ray.data.storage import resolve_path

    path = resolve_path(corpus_cfg.path, Path(cache_dir) / "datasets")
    records = read_records(path, corpus_cfg.format)
    fields = {"id": "id", "title": "title", "text": "text", **corpus_cfg.fields}
    first = records[0]
    if fields["text"] not in first and "contents" in first:  # DPR/FlashRAG layout
        return [Passage(str(r.get("id", i)), *reversed(_split_dpr_contents(r["contents"]))) for i, r in enumerate(records)]
    require_columns(path, first, {"text": fields["text"]})
    passages = [
        Passage(id=str(r.get(fields["id"], i)), text=str(r[fields["text"]]), title=str(r.get(fields["title"]) or ""))
        for i, r in enumerate(records)
    ]
    if not any(p.text.strip() for p in passages):
        raise DataError(f"{path}: every passage text is empty")
    return passages


def corpus_fingerprint(passages: list[Passage]) -> str:
    """A hash of the corpus content: an index is reused only for the very same passages."""
    digest = hashlib.sha256()
    for p in passages:
        for part in (p.id, p.title, p.text):
            digest.update(part.encode("utf-8"))
            digest.update(b"\0")
    return digest.hexdigest()[:16]
