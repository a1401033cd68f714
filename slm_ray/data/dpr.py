"""DPR-format data as it comes: a JSON list of ``{question, answers, positive_ctxs, negative_ctxs,
hard_negative_ctxs}``, each ctx ``{title, text}`` and optionally ``passage_id`` / ``psg_id``.

As a dataset, each question's first positive passage is its gold passage (so ``oracle_context``
runs); as a corpus, every passage of every list, deduplicated by text. A passage without an id of
its own is named by a hash of its text, so the gold passage of an oracle run and the same passage
retrieved from the corpus carry one id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from slm_ray.data import checks
from slm_ray.data.base import Passage
from slm_ray.data.readers import Row
from slm_ray.errors import DataError

CTX_LISTS = ("positive_ctxs", "negative_ctxs", "hard_negative_ctxs")
ID_KEYS = ("passage_id", "psg_id", "id")


def looks_like_dpr(path: Path, head_bytes: int = 1 << 16) -> bool:
    """Whether a file's first records have DPR's ``positive_ctxs``, from its first bytes only: a
    DPR training file is hundreds of MB, and the config check that asks must stay instant."""
    import gzip

    try:
        with open(path, "rb") as raw:
            gzipped = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if gzipped else open(path, "rb")) as handle:
            head = handle.read(head_bytes)
    except (OSError, EOFError):
        return False  # unreadable: the run's own read names the problem
    return b'"positive_ctxs"' in head


def is_dpr(record: dict[str, Any]) -> bool:
    """Whether a record has the DPR layout (its passages under ``positive_ctxs``)."""
    return "positive_ctxs" in record


def _ctx_list(row: Row, key: str) -> list[Any]:
    value = checks.field(row, key)
    if value is checks.MISSING or value is None:
        return []
    if not isinstance(value, list):
        raise DataError(f"{row.where}: {key!r} is {checks.describe(value)} (expected a list of passages, "
                        "each with 'title' and 'text')")
    return value


def ctx_passage(row: Row, key: str, position: int) -> Passage:
    """Passage ``position`` of the row's list ``key``, checked: a non-empty text, an optional title."""
    ctx = _ctx_list(row, key)[position]
    where = f"{row.where}: {key}[{position}]"
    if not isinstance(ctx, dict):
        raise DataError(f"{where} is {checks.describe(ctx)} (expected an object with 'title' and 'text')")
    text = checks.text_value(where, "'text'", ctx.get("text", checks.MISSING))
    title = checks.optional_text_value(where, "'title'", ctx.get("title", checks.MISSING))
    own_id = next((ctx[k] for k in ID_KEYS if ctx.get(k) not in (None, "")), None)
    passage_id = (checks.identifier_value(where, "passage id", own_id) if own_id is not None
                  else "dpr-" + hashlib.sha256(text.encode("utf-8")).hexdigest()[:16])
    return Passage(passage_id, text, title)


def gold_passages(row: Row) -> tuple[Passage, ...]:
    """The row's first positive passage (none when the list is empty)."""
    return (ctx_passage(row, "positive_ctxs", 0),) if _ctx_list(row, "positive_ctxs") else ()


def corpus_passages(rows: Iterable[Row]) -> Iterator[Passage]:
    """Every passage of every row, the first of each text only; one id naming two texts is refused."""
    seen_texts: set[str] = set()
    ids = checks.UniqueIds("passage id")
    for row in rows:
        for key in CTX_LISTS:
            for position in range(len(_ctx_list(row, key))):
                passage = ctx_passage(row, key, position)
                if passage.text in seen_texts:
                    continue
                seen_texts.add(passage.text)
                ids.add(passage.id, Row(f"{row.where}: {key}[{position}]", row.index, {}))
                yield passage
