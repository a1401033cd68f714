"""Natural Questions (open) with gold passages, in the lost-in-the-middle ``nq-open-oracle`` format."""

from __future__ import annotations

from slm_ray.data.base import BaseDataset, Passage, QAExample
from slm_ray.data.builtin import NQ_OPEN_ORACLE
from slm_ray.data.files import iter_jsonl
from slm_ray.errors import DataError


class NQOpenDataset(BaseDataset):
    """NQ-open dev questions; ``ctxs[0]`` is the annotated gold passage (the oracle context)."""

    has_gold_context = True

    def read_all(self) -> list[QAExample]:
        path = self.local_path(NQ_OPEN_ORACLE)
        examples = []
        for i, record in enumerate(iter_jsonl(path)):
            try:
                gold = tuple(
                    Passage(id=f"nq-{i}-gold", title=ctx.get("title", ""), text=ctx["text"])
                    for ctx in record.get("ctxs", [])[:1]
                )
                examples.append(QAExample(f"nq-{i}", record["question"], tuple(record["answers"]), gold))
            except (KeyError, TypeError) as exc:
                raise DataError(f"{path}: record {i + 1} is not in nq-open-oracle format (missing {exc})") from None
        if not examples:
            raise DataError(f"{path} holds no records")
        return examples
