"""Bad input, one row per case: one line naming the bad value, exit code 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from slm_ray.run import main as run_main

TINY = ["model=tiny_llama", "tracker=none"]
FILE = ["dataset=file", "dataset.path=qa.jsonl"]

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
]


@pytest.mark.parametrize("args,expected,files", CASES, ids=[" ".join(c[0])[-60:] for c in CASES])
def test_bad_input_is_refused(args, expected, files, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    for name, content in files.items():
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
