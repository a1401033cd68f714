"""Datasets and corpora: the built-in files, users' JSONL/CSV/Parquet, local and on S3."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from slm_ray.data.corpus import builtin_nq_corpus, corpus_fingerprint, load_corpus
from slm_ray.errors import DataError
from slm_ray.experiment import build_dataset


def test_builtin_nq_has_questions_answers_and_gold_passages(make_config) -> None:
    examples = build_dataset(make_config())
    assert len(examples) == 2655
    first = examples[0]
    assert first.question == "who got the first nobel prize in physics"
    assert first.answers == ("Wilhelm Conrad Röntgen",)
    assert "Röntgen" in first.gold_passages[0].text and first.gold_passages[0].title


def test_builtin_simpleqa_has_no_gold_passages(make_config) -> None:
    examples = build_dataset(make_config("dataset=simpleqa"))
    assert len(examples) == 4326
    assert all(not e.gold_passages for e in examples[:50]) and all(e.answers for e in examples[:50])


def test_limit_takes_the_first_and_sample_is_seeded(make_config) -> None:
    first = build_dataset(make_config("dataset.limit=5"))
    assert [e.id for e in first] == [f"nq-{i}" for i in range(5)]
    sample_a = build_dataset(make_config("dataset.limit=5", "dataset.sample=true", "dataset.seed=1"))
    sample_b = build_dataset(make_config("dataset.limit=5", "dataset.sample=true", "dataset.seed=1"))
    sample_c = build_dataset(make_config("dataset.limit=5", "dataset.sample=true", "dataset.seed=2"))
    assert [e.id for e in sample_a] == [e.id for e in sample_b] != [e.id for e in sample_c]


ROWS = [{"qid": "a", "q": "who wrote hamlet", "gold": ["William Shakespeare", "Shakespeare"], "ctx": "Hamlet is by Shakespeare."},
        {"qid": "b", "q": "capital of france", "gold": ["Paris"], "ctx": "Paris is the capital."}]
FIELDS = ["dataset=file", "dataset.fields.id=qid", "dataset.fields.question=q", "dataset.fields.answers=gold"]


def _write(path: Path, fmt: str) -> Path:
    frame = pd.DataFrame(ROWS)
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    elif fmt == "csv":
        frame.assign(gold=frame.gold.map("|".join)).to_csv(path, index=False)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_user_file_in_each_format(fmt: str, tmp_path: Path, make_config) -> None:
    path = _write(tmp_path / f"qa.{fmt}", fmt)
    examples = build_dataset(make_config(*FIELDS, f"dataset.path={path}"))
    assert [(e.id, e.question, e.answers) for e in examples] == [
        ("a", "who wrote hamlet", ("William Shakespeare", "Shakespeare")), ("b", "capital of france", ("Paris",))]


def test_user_file_with_a_context_column_serves_oracle_context(tmp_path: Path, make_config) -> None:
    path = _write(tmp_path / "qa.jsonl", "jsonl")
    cfg = make_config(*FIELDS, f"dataset.path={path}", "dataset.fields.context=ctx", "experiment_mode=oracle_context")
    assert build_dataset(cfg)[1].gold_passages[0].text == "Paris is the capital."


def test_malformed_jsonl_line_is_named(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps(ROWS[0]) + "\n{not json\n")
    with pytest.raises(DataError, match=r"qa.jsonl:2: malformed JSON line"):
        build_dataset(make_config(*FIELDS, f"dataset.path={path}"))


def test_csv_without_the_question_column_names_it(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.csv"
    path.write_text("query,gold\nx,y\n")
    with pytest.raises(DataError, match=r"no column 'q' for question \(columns: query, gold"):
        build_dataset(make_config(*FIELDS, f"dataset.path={path}"))


@pytest.mark.parametrize("content,message", [(None, "not found"), ("", "holds no records"), ("\n\n", "holds no records")])
def test_missing_or_empty_file(content: str | None, message: str, tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    if content is not None:
        path.write_text(content)
    with pytest.raises(DataError, match=message):
        build_dataset(make_config(*FIELDS, f"dataset.path={path}"))


def test_dataset_from_s3_is_cached_by_etag(s3_client, s3_bucket: str, make_config, tmp_path: Path) -> None:
    body = "".join(json.dumps(r) + "\n" for r in ROWS)
    s3_client.put_object(Bucket=s3_bucket, Key="sets/qa.jsonl", Body=body.encode())
    cfg = make_config(*FIELDS, f"dataset.path=s3://{s3_bucket}/sets/qa.jsonl", f"experiment.cache_dir={tmp_path / 'c'}")
    assert [e.id for e in build_dataset(cfg)] == ["a", "b"]
    cached = list((tmp_path / "c" / "datasets").rglob("qa.jsonl"))
    assert len(cached) == 1 and cached[0].read_text() == body


def test_builtin_corpus_is_gold_passages_plus_distractors() -> None:
    passages = builtin_nq_corpus()
    assert len(passages) == 3600  # 2,600 distinct gold passages + 1,000 distractors
    assert len({p.id for p in passages}) == 3600
    assert sum(p.id.startswith("wiki-") for p in passages) == 1000
    assert passages[-1].title and not passages[-1].text.startswith('"')


def test_user_corpus_and_its_fingerprint(tmp_path: Path, make_config) -> None:
    path = tmp_path / "corpus.jsonl"
    path.write_text(json.dumps({"id": "p1", "title": "T", "text": "hello"}) + "\n" + json.dumps({"id": "p2", "text": "x"}) + "\n")
    cfg = make_config("corpus=file", f"corpus.path={path}")
    passages = load_corpus(cfg.corpus, tmp_path)
    assert [(p.id, p.title, p.text) for p in passages] == [("p1", "T", "hello"), ("p2", "", "x")]
    assert corpus_fingerprint(passages) != corpus_fingerprint(passages[:1])
