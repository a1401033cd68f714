"""A fixed held-out split of a question set, for choosing a setting on one part and measuring it on the other.

A question's side depends only on a hash of its id, so the split is the same on every machine and
run, does not move when questions are added or reordered, and needs no stored list.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TypeVar

from slm_ray.data.base import QAExample

Example = TypeVar("Example", bound=QAExample)

#: Share of the questions that goes to the tuning side (about 530 of the 2,655 built-in NQ questions).
TUNING_SHARE = 0.2


def in_tuning_split(example_id: str, share: float = TUNING_SHARE) -> bool:
    """Whether the question of this id is on the tuning side: the first 8 bytes of its SHA-256 as a
    fraction of 2**64, below ``share``."""
    if not 0.0 < share < 1.0:
        raise ValueError(f"share={share!r}: the tuning share must be between 0 and 1 (exclusive)")
    digest = hashlib.sha256(example_id.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") < share * 2**64


def tuning_test_split(examples: Sequence[Example], share: float = TUNING_SHARE) -> tuple[list[Example], list[Example]]:
    """(tuning, test): the examples on each side, in their original order."""
    tuning = [e for e in examples if in_tuning_split(e.id, share)]
    test = [e for e in examples if not in_tuning_split(e.id, share)]
    return tuning, test
