"""Every row a run uses is checked: bad rows, bad bytes and bad files are refused with one line that
names the file as the user gave it (path or s3:// URI) and the line or row; valid files read as before."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from slm_ray.data import readers
from slm_ray.data.corpus import builtin_nq_corpus, corpus_fingerprint, load_corpus
from slm_ray.data.nq import NQOpenDataset
from slm_ray.data.simpleqa import SimpleQADataset
from slm_ray.errors import DataError
from slm_ray.experiment import build_dataset

FILE = ["dataset=file"]


def qa(question: Any = "who wrote hamlet", answers: Any = ("Shakespeare",), **extra: Any) -> dict[str, Any]:
    return {"question": question, "answers": list(answers) if isinstance(answers, tuple) else answers, **extra}


def jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text(jsonl(rows), encoding="utf-8")
    return path


def refused(make_config, *overrides: str) -> str:
    """The one-line message a dataset build is refused with."""
    with pytest.raises(DataError) as raised:
        build_dataset(make_config(*overrides))
    message = str(raised.value)
    assert "\n" not in message
    return message


def one_line(message: str) -> str:
    assert "\n" not in message
    return message


# --- rows -------------------------------------------------------------------------------------


def test_duplicate_ids_are_refused_naming_both_lines(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(id="a"), qa(id="b"), qa(id="a")])
    message = refused(make_config, *FILE, f"dataset.path={path}", "dataset.fields.id=id")
    assert message == f"{path}:3: duplicate id 'a' (first at {path}:1; each id must be unique)"


def test_duplicate_numeric_and_string_ids_collide(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(id=7), qa(id="7")])
    assert "qa.jsonl:2: duplicate id '7'" in refused(make_config, *FILE, f"dataset.path={path}", "dataset.fields.id=id")


@pytest.mark.parametrize("question", ["", "   ", "\t\n"])
def test_empty_question_is_refused(question: str, tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(), qa(question=question)])
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        "qa.jsonl:2: 'question' is empty (expected a non-empty string)")


def test_empty_answer_list_is_refused(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(answers=[])])
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        "qa.jsonl:1: 'answers' is an empty list (expected a list of strings or one string)")


def test_missing_key_on_row_3_is_refused(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(), qa(), {"question": "no answers here"}])
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        "qa.jsonl:3: 'answers' is missing (expected a list of strings or one string)")


def test_null_answers_are_refused_naming_the_mapped_column(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [{"q": "x", "gold": ["y"]}] * 6 + [{"q": "x", "gold": None}])
    message = refused(make_config, *FILE, f"dataset.path={path}", "dataset.fields.question=q", "dataset.fields.answers=gold")
    assert message == f"{path}:7: 'gold' (answers) is null (expected a list of strings or one string)"


def test_numbers_are_accepted_as_answers(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(answers=1945), qa(answers=[1945, "nineteen forty-five", 2.5])])
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}"))
    assert [e.answers for e in examples] == [("1945",), ("1945", "nineteen forty-five", "2.5")]


@pytest.mark.parametrize("answers,problem", [
    (["Paris", None], "holds null at position 2"),
    ([{"text": "Paris"}], "holds an object at position 1"),
    ([["Paris"]], "holds a list at position 1"),
    ([True], "holds a boolean (true) at position 1"),
    (True, "is a boolean (true)"),
    ({"text": "Paris"}, "is an object"),
    ("", "is empty"),
    (" | ", "is empty"),
    (["", "  "], "holds only blank strings"),
    ("[null]", "holds null at position 1"),
], ids=lambda value: json.dumps(value))
def test_bad_answer_values_are_refused(answers: Any, problem: str, tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(answers=answers)])
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        f"qa.jsonl:1: 'answers' {problem} (expected a list of strings or one string)")


@pytest.mark.parametrize("change,message", [
    ({"question": 42}, "'question' is a number (42) (expected a non-empty string)"),
    ({"question": None}, "'question' is null"),
    ({"id": None}, "'id' is null (expected a non-empty string or a number, unique in the file)"),
    ({"id": " "}, "'id' is empty"),
    ({"ctx": {"text": "t"}}, "'ctx' (context) is an object (expected a string, or null for none)"),
], ids=["question-number", "question-null", "id-null", "id-blank", "context-object"])
def test_other_bad_values_are_refused(change: dict[str, Any], message: str, tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(id="first", ctx="c"), {**qa(id="second", ctx="c"), **change}])
    assert f"qa.jsonl:2: {message}" in refused(make_config, *FILE, f"dataset.path={path}", "dataset.fields.id=id",
                                               "dataset.fields.context=ctx")


def test_a_null_context_means_no_gold_passage(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(ctx=None, t=None), qa(ctx="Hamlet is by Shakespeare.", t=None)])
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.fields.context=ctx", "dataset.fields.title=t"))
    assert [e.gold_passages for e in examples][0] == ()
    assert [(p.text, p.title) for p in examples[1].gold_passages] == [("Hamlet is by Shakespeare.", "")]


# --- bytes: encodings and gzip ----------------------------------------------------------------


def test_non_utf8_jsonl_names_the_line(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(jsonl([qa(), qa()]).encode() + '{"question": "café?", "answers": ["x"]}\n'.encode("latin-1"))
    assert refused(make_config, *FILE, f"dataset.path={path}").startswith(
        f"{path}:3: not valid UTF-8 (byte 0xe9 at byte 18 of the line; save the file as UTF-8)")


def test_utf16_text_is_refused_as_not_utf8(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(jsonl([qa()]).encode("utf-16"))
    assert "qa.jsonl:1: " in refused(make_config, *FILE, f"dataset.path={path}")


def test_a_byte_order_mark_is_accepted(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + jsonl([qa()]).encode())
    assert build_dataset(make_config(*FILE, f"dataset.path={path}"))[0].question == "who wrote hamlet"


LONG = jsonl([qa(question=f"question {i}") for i in range(2000)]).encode()


@pytest.fixture(params=["in-memory", "streamed"])
def gzip_path(request, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both ways a gzip file is checked: small ones decompressed into memory, big ones streamed twice."""
    if request.param == "streamed":
        monkeypatch.setattr(readers, "GZIP_IN_MEMORY_MAX", 0)
    return request.param


def test_gzip_is_read_both_ways(gzip_path: str, tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(gzip.compress(LONG))
    assert len(build_dataset(make_config(*FILE, f"dataset.path={path}"))) == 2000
    assert len(build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.limit=5"))) == 5


def test_truncated_gzip_is_one_line(gzip_path: str, tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(gzip.compress(LONG)[:-100])
    message = refused(make_config, *FILE, f"dataset.path={path}")
    assert message.startswith(f"{path}: gzip data ends early") and "truncated" in message


@pytest.mark.parametrize("where", ["checksum", "deflate data"])
def test_corrupt_gzip_is_one_line(where: str, gzip_path: str, tmp_path: Path, make_config) -> None:
    data = bytearray(gzip.compress(LONG))
    if where == "checksum":
        data[-8] ^= 0xFF  # the CRC-32 in the trailer
    else:
        data[len(data) // 2 : len(data) // 2 + 4] = b"\xff\xff\xff\xff"
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(bytes(data))
    assert refused(make_config, *FILE, f"dataset.path={path}").startswith(f"{path}: corrupt gzip data")


def test_corrupt_gzip_is_refused_by_a_limited_run(gzip_path: str, tmp_path: Path, make_config) -> None:
    # Only the checksum at the very end is wrong: the first rows decompress fine, and a limited run
    # that stopped reading there would never notice that the file is not what was written.
    data = bytearray(gzip.compress(LONG))
    data[-8] ^= 0xFF
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(bytes(data))
    assert refused(make_config, *FILE, f"dataset.path={path}", "dataset.limit=5").startswith(
        f"{path}: corrupt gzip data (CRC check failed")


def test_plain_text_named_gz_is_refused(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl.gz"
    path.write_bytes(LONG)
    assert refused(make_config, *FILE, f"dataset.path={path}") == (
        f"{path}: named .gz but not gzip-compressed (rename it without .gz, or compress it with gzip)")


def test_gzip_content_without_gz_name_is_read(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(gzip.compress(LONG))
    assert len(build_dataset(make_config(*FILE, f"dataset.path={path}"))) == 2000


# --- CSV and Parquet --------------------------------------------------------------------------


def test_csv_missing_answer_cell_names_the_file_line(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.csv"
    # line 1 header; the quoted question spans lines 2-3; line 4 blank; line 5 lacks its answer cell
    path.write_text('question,answers\n"who wrote\nhamlet",Shakespeare\n\ncapital of france\n')
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        "qa.csv:5: 'answers' is empty (expected a list of strings or one string)")


@pytest.mark.parametrize("content,message", [
    ('question,answers\nq,a\nq,"a,b",c\n', "qa.csv:3: 3 cells but the header (line 1) has 2 (quote values that contain a comma)"),
    ('question,answers\nq,a\n"q,a\nq,b\n', 'qa.csv:3: a quoted value that starts on this line is never closed'),
    (b"PAR1\x15\x04\x15\x00,x\n", "qa.csv:1: holds a NUL byte, so it is not UTF-8 text"),
], ids=["extra-cell", "unclosed-quote", "binary"])
def test_csv_that_is_not_csv_is_one_line(content: str | bytes, message: str, tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert message in refused(make_config, *FILE, f"dataset.path={path}")


def test_parquet_rows_are_named_by_row_number(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.parquet"
    pd.DataFrame({"question": ["q1", "q2", "q3"], "answers": [["a"], ["b"], ["c", None]]}).to_parquet(path)
    assert refused(make_config, *FILE, f"dataset.path={path}").endswith(
        "qa.parquet: row 3: 'answers' holds null at position 2 (expected a list of strings or one string)")


@pytest.mark.parametrize("content", [b"question,answers\nq,a\n", b"PAR1 then nothing", b""],
                         ids=["csv-named-parquet", "truncated", "empty"])
def test_a_file_that_is_not_parquet_is_one_line(content: bytes, tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.parquet"
    path.write_bytes(content)
    assert refused(make_config, *FILE, f"dataset.path={path}").startswith(f"{path}: not a readable Parquet file (")


# --- limit and sample -------------------------------------------------------------------------


def _file_with_bad_row(tmp_path: Path, fmt: str, bad_row: int, rows: int = 3000) -> Path:
    """``rows`` valid questions with row ``bad_row`` (1-based) lacking its answers."""
    records = [qa(question=f"question {i}", answers=[f"answer {i}"]) for i in range(1, rows + 1)]
    records[bad_row - 1]["answers"] = [] if fmt == "parquet" else None
    path = tmp_path / f"qa.{fmt}"
    if fmt == "jsonl":
        write_jsonl(path, records)
    elif fmt == "csv":
        frame = pd.DataFrame(records)
        frame.assign(answers=[a[0] if a else "" for a in frame.answers]).to_csv(path, index=False)
    else:
        pd.DataFrame(records).to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_limit_50_does_not_read_a_bad_row_at_3000(fmt: str, tmp_path: Path, make_config) -> None:
    path = _file_with_bad_row(tmp_path, fmt, bad_row=3000)
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.limit=50"))
    assert [e.id for e in examples] == [f"file-{i}" for i in range(50)]
    assert examples[-1].answers == ("answer 50",)


@pytest.mark.parametrize("fmt,where", [("jsonl", "qa.jsonl:10"), ("csv", "qa.csv:11"), ("parquet", "qa.parquet: row 10")])
def test_limit_50_refuses_a_bad_row_at_10(fmt: str, where: str, tmp_path: Path, make_config) -> None:
    path = _file_with_bad_row(tmp_path, fmt, bad_row=10)
    assert f"{where}: 'answers' is " in refused(make_config, *FILE, f"dataset.path={path}", "dataset.limit=50")


def test_limit_does_not_read_past_its_rows_even_broken_bytes(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_bytes(jsonl([qa()] * 50).encode() + b"\xff\xfe not json, not UTF-8\n")
    assert len(build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.limit=50"))) == 50
    assert "qa.jsonl:51: not valid UTF-8" in refused(make_config, *FILE, f"dataset.path={path}", "dataset.limit=51")


def test_a_duplicate_after_the_limit_does_not_fail_it(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(id="a"), qa(id="b"), qa(id="a")])
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.fields.id=id", "dataset.limit=2"))
    assert [e.id for e in examples] == ["a", "b"]


@pytest.mark.parametrize("bad_row", [7, 3000])
def test_sample_checks_every_row(bad_row: int, tmp_path: Path, make_config) -> None:
    path = _file_with_bad_row(tmp_path, "jsonl", bad_row=bad_row)
    message = refused(make_config, *FILE, f"dataset.path={path}", "dataset.limit=50", "dataset.sample=true")
    assert f"qa.jsonl:{bad_row}: 'answers' is null" in message


def test_sample_of_a_valid_file_is_unchanged(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "qa.jsonl", [qa(question=f"q{i}") for i in range(100)])
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}", "dataset.limit=5", "dataset.sample=true",
                                         "dataset.seed=3"))
    assert [e.id for e in examples] == ["file-16", "file-30", "file-47", "file-69", "file-75"]


# --- valid files read as before ---------------------------------------------------------------


def test_valid_csv_with_quotes_blank_lines_and_short_rows(tmp_path: Path, make_config) -> None:
    path = tmp_path / "qa.csv"
    path.write_bytes(b'\xef\xbb\xbfquestion,answers,notes,notes\r\n\r\n"who wrote\r\n""Hamlet""?",Shakespeare|Will,x,y\r\n'
                     b"capital of france,\"[\"\"Paris\"\"]\"\r\n   \r\nyear?,1945\r\n")
    examples = build_dataset(make_config(*FILE, f"dataset.path={path}"))
    assert [(e.id, e.question, e.answers) for e in examples] == [
        ("file-0", 'who wrote\r\n"Hamlet"?', ("Shakespeare", "Will")),
        ("file-1", "capital of france", ("Paris",)),
        ("file-2", "year?", ("1945",)),
    ]


def test_builtin_datasets_and_corpus_read_exactly_as_before() -> None:
    """Digests taken before rows were checked: ids, order and values (and so the index cache key)."""
    def digest(examples: list) -> str:
        h = hashlib.sha256()
        for e in examples:
            h.update(json.dumps([e.id, e.question, list(e.answers),
                                 [[p.id, p.title, p.text] for p in e.gold_passages]]).encode())
        return h.hexdigest()[:16]

    assert digest(NQOpenDataset(name="nq", path="builtin").load()) == "13fb11cacf167fee"
    assert digest(SimpleQADataset(name="simpleqa", path="builtin").load()) == "7cb97f1d6e54bdf9"
    assert corpus_fingerprint(builtin_nq_corpus()) == "9a3919fe62ab804b"


# --- the NQ and SimpleQA formats from a path --------------------------------------------------


NQ_ROW = {"question": "who got the first nobel prize in physics", "answers": ["Wilhelm Conrad Röntgen"],
          "ctxs": [{"title": "Nobel Prize", "text": "Röntgen received the first prize."}]}


@pytest.mark.parametrize("row,message", [
    ({**NQ_ROW, "answers": None}, "'answers' is null"),
    ({**NQ_ROW, "question": ""}, "'question' is empty"),
    ({**NQ_ROW, "ctxs": [{"title": "T"}]}, "'ctxs[0].text' is missing"),
    ({**NQ_ROW, "ctxs": "text"}, "'ctxs' is a string (expected a list of passages, the gold one first)"),
], ids=["answers-null", "question-empty", "ctx-text-missing", "ctxs-string"])
def test_nq_format_file_rows_are_checked(row: dict[str, Any], message: str, tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "nq.jsonl", [NQ_ROW, row])
    assert f"nq.jsonl:2: {message}" in refused(make_config, f"dataset.path={path}")


def test_nq_format_file_keeps_its_ids(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "nq.jsonl", [NQ_ROW, {**NQ_ROW, "ctxs": []}])
    examples = build_dataset(make_config(f"dataset.path={path}"))
    assert [(e.id, len(e.gold_passages)) for e in examples] == [("nq-0", 1), ("nq-1", 0)]
    assert examples[0].gold_passages[0].id == "nq-0-gold"


def test_simpleqa_format_file_rows_are_checked(tmp_path: Path, make_config) -> None:
    path = tmp_path / "simpleqa.csv"
    path.write_text("metadata,problem,answer\n{},Who?,Someone\n{},When?, \n")
    assert "simpleqa.csv:3: 'answer' is empty (expected a non-empty string)" in refused(
        make_config, "dataset=simpleqa", f"dataset.path={path}")


# --- s3: errors name the URI, never the cache copy ---------------------------------------------


@pytest.mark.parametrize("key,body,message", [
    ("sets/qa.jsonl", jsonl([qa(), qa(answers=None)]).encode(), ":2: 'answers' is null"),
    ("sets/qa.jsonl.gz", gzip.compress(LONG)[:-100], ": gzip data ends early"),
    ("sets/qa.csv", b"question,answers\nq,a\nq\n", ":3: 'answers' is empty"),
], ids=["jsonl-row", "truncated-gzip", "csv-row"])
def test_s3_dataset_errors_name_the_uri(key: str, body: bytes, message: str, s3_client, s3_bucket: str,
                                        make_config, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key=key, Body=body)
    uri = f"s3://{s3_bucket}/{key}"
    error = refused(make_config, *FILE, f"dataset.path={uri}", f"experiment.cache_dir={tmp_path / 'cache'}")
    assert error.startswith(f"{uri}{message}")
    assert "cache" not in error


def test_s3_nq_format_error_names_the_uri(s3_client, s3_bucket: str, make_config, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="nq/dev.jsonl", Body=jsonl([NQ_ROW, {**NQ_ROW, "question": " "}]).encode())
    uri = f"s3://{s3_bucket}/nq/dev.jsonl"
    error = refused(make_config, f"dataset.path={uri}", f"experiment.cache_dir={tmp_path / 'cache'}")
    assert error == f"{uri}:2: 'question' is empty (expected a non-empty string)"


# --- corpus -----------------------------------------------------------------------------------


def _corpus(make_config, path: str | Path, *overrides: str) -> list:
    cfg = make_config("corpus=file", f"corpus.path={path}", *overrides)
    return load_corpus(cfg.corpus, cfg.experiment.cache_dir)


def _corpus_refused(make_config, path: str | Path, *overrides: str) -> str:
    with pytest.raises(DataError) as raised:
        _corpus(make_config, path, *overrides)
    return one_line(str(raised.value))


def test_corpus_duplicate_id_is_refused(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"id": "p1", "text": "a"}, {"id": "p2", "text": "b"},
                                                     {"id": "p1", "text": "c"}])
    assert _corpus_refused(make_config, path) == (
        f"{path}:3: duplicate passage id 'p1' (first at {path}:1; each passage id must be unique)")


def test_corpus_row_number_id_colliding_with_a_given_one_is_refused(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"text": "a"}, {"id": "0", "text": "b"}])
    assert "passages.jsonl:2: duplicate passage id '0'" in _corpus_refused(make_config, path)


@pytest.mark.parametrize("row,message", [
    ({"id": "p2", "text": ""}, "'text' is empty (expected a non-empty string)"),
    ({"id": "p2", "text": "  \n"}, "'text' is empty"),
    ({"id": "p2"}, "'text' is missing"),
    ({"id": "p2", "text": None}, "'text' is null"),
    ({"id": None, "text": "b"}, "'id' is null"),
], ids=["empty", "blank", "missing", "null", "id-null"])
def test_corpus_bad_rows_are_refused(row: dict[str, Any], message: str, tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"id": "p1", "text": "a"}, row])
    assert _corpus_refused(make_config, path).startswith(f"{path}:2: {message}")


def test_corpus_in_dpr_layout_is_checked(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"id": "1", "contents": '"Title"\nSome text.'},
                                                     {"id": "2", "contents": '"Only a title"'}])
    assert "passages.jsonl:2: 'contents' has no text after its title line" in _corpus_refused(make_config, path)
    path = write_jsonl(tmp_path / "good.jsonl", [{"id": "1", "contents": '"Title"\nSome text.'}])
    assert [(p.id, p.title, p.text) for p in _corpus(make_config, path)] == [("1", "Title", "Some text.")]


def test_corpus_parquet_rows_are_named(tmp_path: Path, make_config) -> None:
    path = tmp_path / "passages.parquet"
    pd.DataFrame({"id": ["p1", "p2"], "text": ["a", None]}).to_parquet(path)
    assert _corpus_refused(make_config, path).startswith(f"{path}: row 2: 'text' is null")


def test_corpus_without_the_text_column_says_how_to_map_it(tmp_path: Path, make_config) -> None:
    path = write_jsonl(tmp_path / "passages.jsonl", [{"id": "p1", "body": "a"}])
    assert "no column 'text' for text (columns: id, body; map yours with corpus.fields.text=...)" in (
        _corpus_refused(make_config, path))


def test_s3_corpus_error_names_the_uri(s3_client, s3_bucket: str, make_config, tmp_path: Path) -> None:
    s3_client.put_object(Bucket=s3_bucket, Key="corpus/passages.jsonl",
                         Body=jsonl([{"id": "p1", "text": "a"}, {"id": "p2", "text": ""}]).encode())
    uri = f"s3://{s3_bucket}/corpus/passages.jsonl"
    error = _corpus_refused(make_config, uri, f"experiment.cache_dir={tmp_path / 'cache'}")
    assert error == f"{uri}:2: 'text' is empty (expected a non-empty string)"


def test_a_python_list_in_a_csv_cell_is_a_list_of_answers(tmp_path) -> None:
    from slm_ray.data.files import FileDataset

    path = tmp_path / "qa.csv"
    path.write_text("question,answers\nq1,\"['a b', 'c']\"\nq2,\"[not a list\"\n")
    examples = FileDataset("qa", str(path), {}, cache_dir=str(tmp_path)).load()
    assert [e.answers for e in examples] == [("a b", "c"), ("[not a list",)]


@pytest.mark.parametrize("answers", [["The"], ["a", "..."], "an"])
def test_answers_that_normalisation_empties_are_kept_and_can_be_matched(answers, tmp_path) -> None:
    from slm_ray.data.files import FileDataset
    from slm_ray.evaluation.metrics import exact_match

    path = tmp_path / "qa.jsonl"
    path.write_text(json.dumps({"question": "q", "answers": ["fine"]}) + "\n"
                    + json.dumps({"question": "q2", "answers": answers}) + "\n")
    examples = FileDataset("qa", str(path), {}, cache_dir=str(tmp_path)).load()
    assert len(examples) == 2
    assert exact_match(examples[1].answers[0], examples[1].answers) == 1.0
