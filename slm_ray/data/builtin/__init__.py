"""Paths of the data files shipped with the package (see README.md here for sources)."""

from pathlib import Path

BUILTIN_DIR = Path(__file__).resolve().parent
NQ_OPEN_ORACLE = BUILTIN_DIR / "nq_open_oracle.jsonl.gz"
SIMPLEQA_TEST = BUILTIN_DIR / "simple_qa_test_set.csv.gz"
WIKI_DISTRACTORS = BUILTIN_DIR / "wiki_dpr_sample_1k.jsonl.gz"
