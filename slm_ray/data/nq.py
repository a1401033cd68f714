"""Natural Questions (open) with gold passages, in the lost-in-the-middle ``nq-open-oracle`` format."""

from __future__ import annotations

from collections.abc import Generator

from slm_ray.data import checks
from slm_ray.data.base import BaseDataset, Passage, QAExample
from slm_ray.data.builtin import NQ_OPEN_ORACLE
from slm_ray.data.readers import Row, iter_rows
from slm_ray.errors import DataError

CTXS_EXPECTED = "a list of passages, the gold one first"


def gold_context(row: Row) -> tuple[str, str] | None:
    """``(title, text)`` of ``ctxs[0]``, the annotated gold passage; None when ``ctxs`` is absent
    or empty. The passage, when there is one, must have a non-empty text."""
    ctxs = checks.field(row, "ctxs")
    if ctxs is checks.MISSING:
        return None
    if not isinstance(ctxs, list):
        raise DataError(f"{row.where}: 'ctxs' is {checks.describe(ctxs)} (expected {CTXS_EXPECTED})")
    if not ctxs:
        return None
    first = ctxs[0]
    if not isinstance(first, dict):
        raise DataError(f"{row.where}: 'ctxs[0]' is {checks.describe(first)} "
                               "(expected an object with 'text' and optionally 'title')")
    text = checks.text_value(row.where, "'ctxs[0].text'", first.get("text", checks.MISSING))
    title = checks.optional_text_value(row.where, "'ctxs[0].title'", first.get("title", checks.MISSING))
    return title, text


class NQOpenDataset(BaseDataset):
    """NQ-open dev questions; ``ctxs[0]`` is the annotated gold passage (the oracle context).

    Any file given as ``path`` (local or ``s3://``) is read as JSONL in this format, with the same
    checks as the packaged one: a non-empty question, answers as slm_ray.data.checks allows them.
    Ids are ``nq-<record number>``, counted from 0 in file order.
    """

    has_gold_context = True

    def iter_examples(self) -> Generator[QAExample, None, None]:
        path = self.local_path(NQ_OPEN_ORACLE)
        ids = checks.UniqueIds()
        for row in iter_rows(path, "jsonl", self.display_name(NQ_OPEN_ORACLE)):
            example_id = f"nq-{row.index}"
            ids.add(example_id, row)
            question = checks.text(row, "question")
            answers = checks.answers(row, "answers")
            gold = gold_context(row)
            passages = (Passage(id=f"{example_id}-gold", title=gold[0], text=gold[1]),) if gold else ()
            yield QAExample(example_id, question, answers, passages)
