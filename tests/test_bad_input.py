"""Bad input, one row per case: one line naming the bad value, exit code 2, nothing written."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from slm_ray.run import main as run_main

TINY = ["model=tiny_llama", "tracker=none"]
FILE = ["dataset=file", "dataset.path=qa.jsonl"]


def _qa(question: Any = "q", answers: Any = ("a",), **extra: Any) -> dict[str, Any]:
    return {"question": question, "answers": list(answers) if isinstance(answers, tuple) else answers, **extra}


def _jsonl(rows: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(r) + "\n" for r in rows)


def _corrupt_crc(data: bytes) -> bytes:
    """Gzip whose content decompresses fine but whose CRC-32 (in the trailer) does not match."""
    return data[:-8] + bytes([data[-8] ^ 0xFF]) + data[-7:]


# (arguments, text the error line must contain, files to create in the working folder first)
CASES = [
    (["model=nope"], "unknown model option 'nope' (valid:", {}),
    (["retriever=bm26"], "unknown retriever option 'bm26'", {}),
    (["dataset=nq2"], "unknown dataset option 'nq2'", {}),
    (["prompt=fancy"], "unknown prompt option 'fancy'", {}),
    (["tracker=wandb"], "unknown tracker option 'wandb' (valid: clearml, none)", {}),
    (["corpus=wiki"], "unknown corpus option 'wiki'", {}),
    (["model.batchsize=3"], "unknown config key 'model.batchsize'", {}),
    (["experimentmode=no_context"], "unknown config key 'experimentmode'", {}),
    (["model.batch_size=0"], "model.batch_size=0", {}),
    (["model.batch_size=abc"], "model.batch_size='abc'", {}),
    (["model.temperature=-1"], "model.temperature=-1", {}),
    (["model.top_p=0"], "model.top_p=0", {}),
    (["model.max_new_tokens=0"], "model.max_new_tokens=0", {}),
    (["model.dtype=float8"], "model.dtype='float8'", {}),
    (["model.device=tpu"], "model.device='tpu'", {}),
    (["model.load_in_8bit=maybe"], "model.load_in_8bit='maybe'", {}),
    (["dataset.limit=-5"], "dataset.limit=-5", {}),
    (["retriever.k=0"], "retriever.k=0", {}),
    (["retriever=dense", "retriever.index_type=annoy"], "retriever.index_type='annoy'", {}),
    (["experiment_mode=closed_book"], "experiment_mode='closed_book'", {}),
    (["dataset=simpleqa", "experiment_mode=oracle_context"], "experiment_mode=oracle_context needs gold passages", {}),
    (["experiment.name=../x"], "experiment.name='../x'", {}),
    (["experiment.name=/tmp/abs"], "experiment.name='/tmp/abs'", {}),
    (["prompt.closed_book='Q: {question} {oops}'"], "unknown placeholder {oops}", {}),
    (["dataset=file"], "missing value for dataset.path", {}),
    ([*TINY, *FILE], "dataset file not found: qa.jsonl", {}),
    ([*TINY, *FILE], "qa.jsonl holds no records", {"qa.jsonl": ""}),
    ([*TINY, *FILE], "qa.jsonl:2: malformed JSON line", {"qa.jsonl": '{"question": "q", "answers": ["a"]}\n{oops\n'}),
    ([*TINY, "dataset=file", "dataset.path=qa.csv"], "no column 'question' for question", {"qa.csv": "query,answers\nq,a\n"}),
    ([*TINY, "dataset=file", "dataset.path=qa.txt"], "cannot tell the format of qa.txt", {"qa.txt": "x"}),
    ([*TINY, "dataset.path=s3://bucket-only"], "expected s3://bucket/key", {}),
    (["model.gguf_file=missing.gguf", "tracker=none", "dataset.limit=1"], "model.gguf_file='missing.gguf' not in", {}),
    ([*TINY, "model.device=cuda", "dataset.limit=1"], "model.device='cuda' but no CUDA GPU", {}),
    ([*TINY, "experiment_mode=retriever_context", "corpus=file", "corpus.path=passages.jsonl", "dataset.limit=1"],
     "dataset file not found: passages.jsonl", {}),
    (["--frobnicate"], "unknown option '--frobnicate'", {}),
    # every row a run uses is checked; the message names the file as given, the line and what is valid
    ([*TINY, *FILE, "dataset.fields.id=id"], "qa.jsonl:3: duplicate id 'a' (first at qa.jsonl:1;",
     {"qa.jsonl": _jsonl([_qa(id="a"), _qa(id="b"), _qa(id="a")])}),
    ([*TINY, *FILE], "qa.jsonl:2: 'question' is empty (expected a non-empty string)",
     {"qa.jsonl": _jsonl([_qa(), _qa(question=" ")])}),
    ([*TINY, *FILE], "qa.jsonl:1: 'answers' is an empty list (expected a list of strings or one string)",
     {"qa.jsonl": _jsonl([_qa(answers=[])])}),
    ([*TINY, *FILE], "qa.jsonl:3: 'answers' is missing", {"qa.jsonl": _jsonl([_qa(), _qa(), {"question": "q"}])}),
    ([*TINY, *FILE], "qa.jsonl:2: 'answers' is null (expected a list of strings or one string)",
     {"qa.jsonl": _jsonl([_qa(), _qa(answers=None)])}),
    ([*TINY, *FILE], "qa.jsonl:1: 'answers' holds null at position 2", {"qa.jsonl": _jsonl([_qa(answers=["a", None])])}),
    ([*TINY, *FILE], "qa.jsonl:2: not valid UTF-8", {"qa.jsonl": _jsonl([_qa()]).encode() + "{\"question\": \"é\"}\n".encode("latin-1")}),
    ([*TINY, "dataset=file", "dataset.path=qa.jsonl.gz"], "qa.jsonl.gz: gzip data ends early",
     {"qa.jsonl.gz": gzip.compress(_jsonl([_qa()] * 20).encode())[:-10]}),
    ([*TINY, "dataset=file", "dataset.path=qa.jsonl.gz"], "qa.jsonl.gz: corrupt gzip data",
     {"qa.jsonl.gz": _corrupt_crc(gzip.compress(_jsonl([_qa()] * 20).encode()))}),
    ([*TINY, "dataset=file", "dataset.path=qa.jsonl.gz"], "qa.jsonl.gz: named .gz but not gzip-compressed",
     {"qa.jsonl.gz": _jsonl([_qa()])}),
    ([*TINY, "dataset=file", "dataset.path=qa.csv"], "qa.csv:3: 'answers' is empty", {"qa.csv": "question,answers\nq,a\nq\n"}),
    ([*TINY, "dataset=file", "dataset.path=qa.parquet"], "qa.parquet: not a readable Parquet file",
     {"qa.parquet": "question,answers\nq,a\n"}),
    ([*TINY, *FILE, "dataset.limit=50"], "qa.jsonl:10: 'answers' is null",
     {"qa.jsonl": _jsonl([_qa()] * 9 + [_qa(answers=None)] + [_qa()] * 50)}),
    ([*TINY, *FILE, "dataset.limit=5", "dataset.sample=true"], "qa.jsonl:3000: 'answers' is null",
     {"qa.jsonl": _jsonl([_qa()] * 2999 + [_qa(answers=None)])}),
    ([*TINY, "dataset.path=nq.jsonl"], "nq.jsonl:1: 'answers' is a boolean (true)",
     {"nq.jsonl": _jsonl([_qa(answers=True)])}),
    ([*TINY, "experiment_mode=retriever_context", "corpus=file", "corpus.path=passages.jsonl", "dataset.limit=1"],
     "passages.jsonl:2: 'text' is empty (expected a non-empty string)",
     {"passages.jsonl": _jsonl([{"id": "p1", "text": "a"}, {"id": "p2", "text": " "}])}),
    ([*TINY, "experiment_mode=retriever_context", "corpus=file", "corpus.path=passages.jsonl", "dataset.limit=1"],
     "passages.jsonl:2: duplicate passage id 'p1'",
     {"passages.jsonl": _jsonl([{"id": "p1", "text": "a"}, {"id": "p1", "text": "b"}])}),
]


@pytest.mark.parametrize("args,expected,files", CASES, ids=[" ".join(c[0])[-60:] for c in CASES])
def test_bad_input_is_refused(args, expected, files, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
        if isinstance(content, bytes):
            (tmp_path / name).write_bytes(content)
        else:
            (tmp_path / name).write_text(content)
    if "model.device=cuda" in args:
        torch = pytest.importorskip("torch")
        if torch.cuda.is_available():
            pytest.skip("a GPU is present: model.device=cuda is valid here")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code = run_main(args)
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2, err
    assert len(error_lines) == 1 and expected in error_lines[0], err
    assert "Traceback" not in err
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert after == before, "a refused run must write nothing"


def test_there_are_at_least_thirty_cases() -> None:
    assert len(CASES) >= 30 and len({json.dumps(c[0]) + c[1] for c in CASES}) == len(CASES)
