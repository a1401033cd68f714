"""BEIR-style folders as they come: ``corpus.jsonl`` (``_id, title, text``), ``queries.jsonl``
(``_id, text``, answers under ``metadata.answers`` or ``metadata.answer``) and ``qrels/<split>.tsv``
(``query-id, corpus-id, score``).

The questions of a split are the queries its qrels name, in ``queries.jsonl`` order; a query's
gold passage is its first relevant passage (score > 0) in the qrels. Most BEIR sets judge passages
but carry no answers; those have nothing to score, and are refused in one line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from slm_ray.data import checks
from slm_ray.data.base import Passage, QAExample
from slm_ray.data.readers import Row, iter_rows
from slm_ray.errors import DataError

CORPUS = "corpus.jsonl"
QUERIES = "queries.jsonl"
DEFAULT_SPLIT = "test"


def _member(folder: Path, display: str, name: str) -> Path:
    """``name`` inside the folder, or the same gzip-compressed."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise DataError(f"{display}: no {name} in this BEIR folder (expected {CORPUS}, {QUERIES} and qrels/<split>.tsv)")


def corpus_file(folder: Path, display: str) -> Path:
    return _member(folder, display, CORPUS)


def qrels_file(folder: Path, display: str, split: str | None) -> Path:
    """``qrels/<split>.tsv``: the split asked for, else ``test``, else the only one there is."""
    found = sorted(p.name.removesuffix(".tsv") for p in (folder / "qrels").glob("*.tsv")) if (folder / "qrels").is_dir() else []
    if split is None and DEFAULT_SPLIT not in found and len(found) == 1:
        split = found[0]
    split = split or DEFAULT_SPLIT
    if split not in found:
        raise DataError(f"{display}: no qrels/{split}.tsv (splits there: {', '.join(found) or 'none'}; "
                        "choose one with dataset.split=...)")
    return folder / "qrels" / f"{split}.tsv"


def _qrels(path: Path, display: str) -> dict[str, list[tuple[str, str]]]:
    """query id -> [(corpus id, where)] of its relevant passages (score > 0), in file order."""
    relevant: dict[str, list[tuple[str, str]]] = {}
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as exc:
        raise DataError(f"{display}: not valid UTF-8 (byte {exc.start}; save the file as UTF-8)") from None
    for line_no, line in enumerate(lines, start=1):
        cells = line.rstrip("\r").split("\t")
        if not line.strip() or (line_no == 1 and cells[0] in ("query-id", "query_id", "qid")):
            continue
        where = f"{display}:{line_no}"
        if len(cells) != 3:
            raise DataError(f"{where}: {len(cells)} tab-separated cells (expected query-id, corpus-id, score)")
        try:
            score = float(cells[2])
        except ValueError:
            raise DataError(f"{where}: score {cells[2]!r} is not a number") from None
        if score > 0:
            relevant.setdefault(cells[0], []).append((cells[1], where))
    return relevant


def _answers(record: dict[str, Any]) -> Any:
    metadata = record.get("metadata")
    if not isinstance(metadata, dict):
        return checks.MISSING
    return metadata.get("answers", metadata.get("answer", checks.MISSING))


def corpus_passages(path: Path, display: str, wanted: set[str] | None = None) -> Iterator[Passage]:
    """The passages of ``corpus.jsonl`` (only those in ``wanted`` when given), every row checked."""
    ids = checks.UniqueIds("passage id")
    for row in iter_rows(path, "jsonl", display):
        passage_id = checks.identifier(row, "_id", "id")
        ids.add(passage_id, row)
        if wanted is None or passage_id in wanted:
            yield Passage(passage_id, checks.text(row, "text"), checks.optional_text(row, "title"))


def iter_examples(folder: Path, display: str, split: str | None) -> Iterator[QAExample]:
    """The questions of the split, with their answers and gold passage."""
    qrels_path = qrels_file(folder, display, split)
    qrels_display = f"{display}/qrels/{qrels_path.name}"
    relevant = _qrels(qrels_path, qrels_display)
    queries_path = _member(folder, display, QUERIES)
    queries_display = f"{display}/{queries_path.name}"
    rows = [row for row in iter_rows(queries_path, "jsonl", queries_display)
            if str(row.data.get("_id")) in relevant]
    if not rows:
        raise DataError(f"{queries_display}: none of its queries is in {qrels_display} (nothing to ask)")
    if all(_answers(row.data) is checks.MISSING for row in rows):
        raise DataError(f"{display}: no query of {qrels_display} has answers (metadata.answers or metadata.answer "
                        f"in {QUERIES}): nothing to score. Add them, or bring the questions as a JSONL/DPR file "
                        "with an answers column")
    gold_ids = {relevant[str(row.data["_id"])][0][0] for row in rows}
    corpus_path = corpus_file(folder, display)
    gold = {p.id: p for p in corpus_passages(corpus_path, f"{display}/{corpus_path.name}", gold_ids)}
    ids = checks.UniqueIds()
    for row in rows:
        example_id = checks.identifier(row, "_id", "id")
        ids.add(example_id, row)
        question = checks.text(row, "text", "question")
        answers = checks.answers(Row(row.where, row.index, {"metadata.answers": _answers(row.data)}),
                                 "metadata.answers", "answers")
        passage_id, where = relevant[example_id][0]
        if passage_id not in gold:
            raise DataError(f"{where}: corpus-id {passage_id!r} is not in {CORPUS}")
        yield QAExample(example_id, question, answers, (gold[passage_id],))
