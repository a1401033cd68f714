"""SimpleQA (OpenAI simple-evals): a question and one short gold answer, no passages."""

from __future__ import annotations

from slm_ray.data.base import BaseDataset, QAExample
from slm_ray.data.builtin import SIMPLEQA_TEST
from slm_ray.data.files import read_records, require_columns


class SimpleQADataset(BaseDataset):
    """The SimpleQA test set (CSV: metadata, problem, answer)."""

    has_gold_context = False

    def read_all(self) -> list[QAExample]:
        path = self.local_path(SIMPLEQA_TEST)
        records = read_records(path, "csv")
        require_columns(path, records[0], {"question": "problem", "answers": "answer"})
        return [QAExample(f"simpleqa-{i}", r["problem"], (r["answer"],)) for i, r in enumerate(records)]
