"""DPR-format JSON and BEIR folders as they come, as datasets and as corpora, through real runs."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from slm_ray.config import CorpusConfig
from slm_ray.data.builtin import NQ_OPEN_ORACLE, WIKI_DISTRACTORS
from slm_ray.data.corpus import _split_dpr_contents, load_corpus
from slm_ray.data.files import FileDataset, iter_jsonl
from slm_ray.errors import DataError
from slm_ray.experiment import PREDICTIONS, output_dir, run_experiment

N = 12


def _nq(n: int = N) -> list[dict]:
    return list(itertools.islice(iter_jsonl(NQ_OPEN_ORACLE), n))


def _distractors(n: int = 10) -> list[dict]:
    rows = []
    for record in itertools.islice(iter_jsonl(WIKI_DISTRACTORS), n):
        title, text = _split_dpr_contents(record["contents"])
        rows.append({"title": title, "text": text})
    return rows


def write_dpr(folder: Path) -> Path:
    """12 NQ questions in DPR's layout: the gold passage first among the positives (with a
    ``passage_id``, a ``psg_id`` or none), shared negatives (the same texts again), an ``id`` each."""
    distractors = _distractors()
    records = []
    for i, record in enumerate(_nq()):
        gold = {"title": record["ctxs"][0]["title"], "text": record["ctxs"][0]["text"]}
        if i % 3 == 0:
            gold["passage_id"] = f"p{i}"
        elif i % 3 == 1:
            gold["psg_id"] = 1000 + i
        records.append({"id": f"q{i}", "question": record["question"], "answers": record["answers"],
                        "positive_ctxs": [gold], "negative_ctxs": distractors[:3],
                        "hard_negative_ctxs": [distractors[3 + i % 7]]})
    path = folder / "nq-dev.json"
    path.write_text(json.dumps(records, indent=2), encoding="utf-8")  # pretty-printed, as DPR ships it
    return path


def write_beir(folder: Path, answers: bool = True) -> Path:
    """The same questions as a BEIR folder: corpus.jsonl, queries.jsonl (answers in metadata), qrels/test.tsv."""
    folder.mkdir(parents=True, exist_ok=True)
    corpus, queries, qrels = [], [], ["query-id\tcorpus-id\tscore"]
    for i, d in enumerate(_distractors()):
        corpus.append({"_id": f"w{i}", **d})
    for i, record in enumerate(_nq()):
        corpus.append({"_id": f"g{i}", "title": record["ctxs"][0]["title"], "text": record["ctxs"][0]["text"]})
        query = {"_id": f"q{i}", "text": record["question"]}
        if answers:
            query["metadata"] = {"answers": record["answers"]} if i % 2 else {"answer": record["answers"][0]}
        queries.append(query)
        qrels += [f"q{i}\tw0\t0", f"q{i}\tg{i}\t1"]  # a judged non-relevant passage first: score 0 is not gold
    queries.append({"_id": "not-in-qrels", "text": "a query of another split", "metadata": {"answer": "x"}})
    (folder / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in corpus), encoding="utf-8")
    (folder / "queries.jsonl").write_text("".join(json.dumps(r) + "\n" for r in queries), encoding="utf-8")
    (folder / "qrels").mkdir(exist_ok=True)
    (folder / "qrels" / "test.tsv").write_text("\n".join(qrels) + "\n", encoding="utf-8")
    return folder


def test_a_dpr_file_is_a_dataset_with_gold_passages_and_a_deduplicated_corpus(tmp_path: Path) -> None:
    path = write_dpr(tmp_path)
    examples = FileDataset("dpr", str(path), {}).load()
    nq = _nq()
    assert [e.id for e in examples] == [f"q{i}" for i in range(N)]  # the file's own ids
    assert [e.answers for e in examples] == [tuple(r["answers"]) for r in nq]
    assert [e.gold_passages[0].text for e in examples] == [r["ctxs"][0]["text"] for r in nq]
    assert [e.gold_passages[0].id for e in examples[:3]][:2] == ["p0", "1001"]
    passages = load_corpus(CorpusConfig(name="dpr", path=str(path)), tmp_path)
    assert len(passages) == N + 10  # 12 gold + the 10 distractors, each text once
    assert len({p.text for p in passages}) == len(passages)
    by_text = {p.text: p.id for p in passages}
    assert all(by_text[e.gold_passages[0].text] == e.gold_passages[0].id for e in examples)  # one id per passage


def test_a_beir_folder_is_a_dataset_and_a_corpus(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "beir")
    examples = FileDataset("beir", str(folder), {}).load()
    nq = _nq()
    assert [e.id for e in examples] == [f"q{i}" for i in range(N)]  # the qrels' queries only
    assert examples[0].answers == (nq[0]["answers"][0],) and examples[1].answers == tuple(nq[1]["answers"])
    assert [e.gold_passages[0].id for e in examples] == [f"g{i}" for i in range(N)]  # score 0 is not gold
    passages = load_corpus(CorpusConfig(name="beir", path=str(folder)), tmp_path)
    assert len(passages) == N + 10 and passages[0].id == "w0"
    assert FileDataset("beir", str(folder), {}, limit=3).load()[2].id == "q2"


@pytest.mark.parametrize(("break_it", "message"), [
    (lambda rows: rows[2].update(question=""), r"nq-dev\.json\[2\]: 'question' is empty"),
    (lambda rows: rows[1]["positive_ctxs"][0].pop("text"), r"nq-dev\.json\[1\]: positive_ctxs\[0\]: 'text' is missing"),
    (lambda rows: rows[4].update(answers=[]), r"nq-dev\.json\[4\]: 'answers' is an empty list"),
    (lambda rows: rows[5].update(id="q0"), r"nq-dev\.json\[5\]: duplicate id 'q0' \(first at .*nq-dev\.json\[0\]"),
    (lambda rows: rows.insert(3, ["not", "an", "object"]), r"nq-dev\.json\[3\]: expected a JSON object, got list"),
])
def test_a_bad_dpr_record_is_named_by_its_list_index(tmp_path: Path, break_it, message: str) -> None:
    path = write_dpr(tmp_path)
    rows = json.loads(path.read_text())
    break_it(rows)
    path.write_text(json.dumps(rows, indent=2))
    with pytest.raises(DataError, match=message):
        FileDataset("dpr", str(path), {}).load()


def test_malformed_json_lists_and_beir_folders_are_one_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text('[\n  {"question": "q", "answers": ["a"]},\n  {"question": \n]')
    with pytest.raises(DataError, match=r"broken\.json:4: malformed JSON .*read as one JSON list"):
        FileDataset("x", str(broken), {}).load()
    folder = write_beir(tmp_path / "beir")
    with pytest.raises(DataError, match=r"no qrels/dev\.tsv \(splits there: test; choose one with dataset\.split"):
        FileDataset("beir", str(folder), {}, split="dev").load()
    (folder / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq0\tmissing\t1\n")
    with pytest.raises(DataError, match=r"qrels/test\.tsv:2: corpus-id 'missing' is not in corpus\.jsonl"):
        FileDataset("beir", str(folder), {}).load()
    (folder / "qrels" / "test.tsv").write_text("q0\tg0\n")
    with pytest.raises(DataError, match=r"qrels/test\.tsv:1: 2 tab-separated cells"):
        FileDataset("beir", str(folder), {}).load()
    (folder / "corpus.jsonl").unlink()
    with pytest.raises(DataError, match=r"no corpus\.jsonl in this BEIR folder"):
        load_corpus(CorpusConfig(name="beir", path=str(folder)), tmp_path)


def test_a_beir_set_without_answers_is_refused_in_one_line(tmp_path: Path) -> None:
    folder = write_beir(tmp_path / "scifact-like", answers=False)
    proc = subprocess.run([sys.executable, "-m", "slm_ray.run", "model=tiny_llama", "dataset=file",
                           f"dataset.path={folder}", "tracker=none", f"experiment.output_dir={tmp_path / 'out'}",
                           f"experiment.cache_dir={tmp_path / 'cache'}"], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 2, proc.stderr
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "no query of" in error[0] and "metadata.answers or metadata.answer" in error[0]
    assert "nothing to score" in error[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape", ["dpr", "beir"])
def test_oracle_and_retrieval_runs_on_data_as_it_comes(shape: str, make_config, tmp_path: Path) -> None:
    path = write_dpr(tmp_path) if shape == "dpr" else write_beir(tmp_path / "beir")
    common = ("model=tiny_llama", "dataset=file", f"dataset.path={path}", f"dataset.name={shape}")
    oracle_cfg = make_config(*common, "experiment_mode=oracle_context")
    oracle = run_experiment(oracle_cfg, show_progress=False)
    rows = [json.loads(line) for line in (output_dir(oracle_cfg) / PREDICTIONS).read_text().splitlines()]
    assert oracle["n_examples"] == N and all(len(r["contexts"]) == 1 for r in rows)
    assert {r["id"] for r in rows} == {f"q{i}" for i in range(N)}
    retrieval_cfg = make_config(*common, "experiment_mode=retriever_context", "retriever=bm25", "retriever.k=3",
                                "corpus=file", f"corpus.path={path}", f"corpus.name={shape}")
    retrieved = run_experiment(retrieval_cfg, show_progress=False)
    assert retrieved["retriever_info"]["n_passages"] == N + 10
    assert retrieved["metrics"]["retrieval_recall"]["mean"] > 0.7  # each gold passage is in the corpus
    assert retrieved["retrieval_warning"] is None
    rows = [json.loads(line) for line in (output_dir(retrieval_cfg) / PREDICTIONS).read_text().splitlines()]
    gold = {e.id: e.gold_passages[0].id for e in FileDataset(shape, str(path), {}).load()}
    found_gold = sum(any(p["id"] == gold[r["id"]] for p in r["retrieved"]) for r in rows)
    assert found_gold >= N // 2  # passage ids of the corpus and of the gold passages agree


def test_oracle_needs_gold_passages_which_a_plain_file_lacks(make_config, tmp_path: Path) -> None:
    from slm_ray.errors import ConfigError

    plain = tmp_path / "qa.json"
    plain.write_text(json.dumps([{"question": "q?", "answers": ["a"]}]))
    with pytest.raises(ConfigError, match="needs gold passages, which dataset=file does not have"):
        make_config("dataset=file", f"dataset.path={plain}", "experiment_mode=oracle_context")
    assert FileDataset("x", str(plain), {}).load()[0].id == "x-0"  # a JSON list without ids
