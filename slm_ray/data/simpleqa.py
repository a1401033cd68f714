"""SimpleQA (OpenAI simple-evals): a question and one short gold answer, no passages."""

from __future__ import annotations

from collections.abc import Generator

from slm_ray.data import checks
from slm_ray.data.base import BaseDataset, QAExample
from slm_ray.data.builtin import SIMPLEQA_TEST
from slm_ray.data.checks import require_columns
from slm_ray.data.readers import iter_rows


class SimpleQADataset(BaseDataset):
    """The SimpleQA test set (CSV: metadata, problem, answer).

    ``answer`` is one answer taken as written (never split at ``|``); it and ``problem`` must be
    non-empty. Ids are ``simpleqa-<record number>``, counted from 0 in file order.
    """

    has_gold_context = False

    def iter_examples(self) -> Generator[QAExample, None, None]:
        display = self.display_name(SIMPLEQA_TEST)
        ids = checks.UniqueIds()
        for row in iter_rows(self.local_path(SIMPLEQA_TEST), "csv", display):
            if row.index == 0:
                require_columns(display, row.data, {"question": "problem", "answers": "answer"})
            example_id = f"simpleqa-{row.index}"
            ids.add(example_id, row)
            yield QAExample(example_id, checks.text(row, "problem", "question"), (checks.text(row, "answer"),))
