"""What a question, an answer list, an id or a passage text must be, checked one row at a time.

Every row a run uses passes through here, so a bad value is refused with one line that points at
the row and says what is valid, instead of surfacing as a traceback, or worse as a silent 0 in every
mean (an empty question or answer list) or a lost example (an id given twice: its predictions would
collide with the first's). Invalid rows are refused, never skipped: a run measures the file it names.

Answers, the same for every dataset:

* a string is one answer, or several joined with ``|``, or a list written in a string as JSON
  (``["a", "b"]``) or as a Python literal (``['a', 'b']``, as pandas writes list columns to CSV);
* a number (``1945``, ``3.5``) is one answer, written as Python writes it (``"1945"``): years and
  counts are common gold answers and a JSON writer may well leave them unquoted;
* a list (JSON array, Parquet list) holds strings or numbers; blank strings in it are ignored;
* refused: null (NaN), booleans, objects, a list holding null, booleans, objects or lists, and
  anything that leaves no answer (an empty list or string, a list of blanks). Answers that SQuAD's
  normalisation empties ("The The", "...", but also "A", as in vitamin A) are kept: the metrics
  compare them under a lighter normalisation (``slm_ray.evaluation.metrics.NORMALISATIONS``).
"""

from __future__ import annotations

import json
import math
from typing import Any

from slm_ray.data.readers import Row
from slm_ray.errors import DataError

ANSWERS_EXPECTED = "a list of strings or one string"
TEXT_EXPECTED = "a non-empty string"
ID_EXPECTED = "a non-empty string or a number, unique in the file"
OPTIONAL_EXPECTED = "a string, or null for none"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()  # a key the row does not have (``None`` is a JSON null, which is different)


def field(row: Row, column: str) -> Any:
    """The row's value for ``column``, or ``MISSING``."""
    return row.data.get(column, MISSING)


def label(column: str, role: str | None = None) -> str:
    """How a column is named in messages: the user's name, with our role when they differ."""
    return repr(column) if role is None or role == column else f"{column!r} ({role})"


def _plain(value: Any) -> Any:
    """Numpy scalars and arrays (Parquet) as Python values."""
    return value.tolist() if hasattr(value, "tolist") else value


def _is_null(value: Any) -> bool:
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or type(value).__name__ in ("NAType", "NaTType"))


def describe(value: Any) -> str:
    """A value named for a message: ``null``, ``a number (3)``, ``an object``..."""
    if _is_null(value):
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, (int, float)):
        return f"a number ({value})"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return f"a {type(value).__name__}"


def _refuse(where: str, name: str, problem: str, expected: str) -> DataError:
    return DataError(f"{where}: {name} {problem} (expected {expected})")


def text_value(where: str, name: str, value: Any, expected: str = TEXT_EXPECTED) -> str:
    """A required string with something in it (kept as written, not stripped)."""
    if type(value) is str and value.strip():  # the common case first: this runs for every row
        return value
    value = _plain(value)
    if value is MISSING:
        raise _refuse(where, name, "is missing", expected)
    if not isinstance(value, str):
        raise _refuse(where, name, f"is {describe(value)}", expected)
    if not value.strip():
        raise _refuse(where, name, "is empty", expected)
    return value


def text(row: Row, column: str, role: str | None = None) -> str:
    """A question, a passage text: a string that is not blank."""
    return text_value(row.where, label(column, role), field(row, column))


def optional_text_value(where: str, name: str, value: Any) -> str:
    """A string that may be absent, null or blank (all read as ``""``); a number is written out."""
    if type(value) is str:
        return value
    value = _plain(value)
    if value is MISSING or _is_null(value):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _refuse(where, name, f"is {describe(value)}", OPTIONAL_EXPECTED)


def optional_text(row: Row, column: str, role: str | None = None) -> str:
    """A title or a gold context."""
    return optional_text_value(row.where, label(column, role), field(row, column))


def identifier_value(where: str, name: str, value: Any) -> str:
    """An id as a string: a non-blank string as written, or a number written out."""
    value = _plain(value)
    if value is MISSING:
        raise _refuse(where, name, "is missing", ID_EXPECTED)
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return str(value)
    problem = "is empty" if isinstance(value, str) else f"is {describe(value)}"
    raise _refuse(where, name, problem, ID_EXPECTED)


def identifier(row: Row, column: str, role: str | None = None) -> str:
    return identifier_value(row.where, label(column, role), field(row, column))


def answers(row: Row, column: str, role: str | None = None) -> tuple[str, ...]:
    """The gold answers of a row, by the rules in this module's docstring."""
    value = field(row, column)
    found: tuple[str, ...] | str = ()
    if type(value) is list and all(type(a) is str for a in value):  # the common case first
        found = tuple(a for a in value if a.strip())
    if not found:
        found = _answers_or_problem(_plain(value))
    if isinstance(found, str):
        raise _refuse(row.where, label(column, role), found, ANSWERS_EXPECTED)
    return found


def _answers_or_problem(value: Any) -> tuple[str, ...] | str:
    """The answers, or what is wrong with them (a phrase such as ``"is null"``)."""
    if value is MISSING:
        return "is missing"
    if isinstance(value, str):
        stripped = value.strip()
        if not stripped.startswith("["):
            return tuple(a.strip() for a in stripped.split("|") if a.strip()) or "is empty"
        try:
            value = json.loads(stripped)
        except json.JSONDecodeError:
            value = _python_list(stripped)  # "['a', 'b']": how pandas writes a list column to CSV
            if value is None:
                return (stripped,)  # an answer that happens to start with "["
    if _is_null(value) or isinstance(value, (bool, dict)):
        return f"is {describe(value)}"
    if isinstance(value, (int, float)):
        return (str(value),) if math.isfinite(value) else f"is {describe(value)}"
    if not isinstance(value, (list, tuple)):
        return f"is {describe(value)}"
    for position, item in enumerate(value, start=1):
        ok = isinstance(item, str) or (isinstance(item, (int, float)) and not isinstance(item, bool)
                                       and math.isfinite(item))
        if not ok:
            return f"holds {describe(item)} at position {position}"
    found = tuple(str(a) for a in value if str(a).strip())
    if found:
        return found
    return "is an empty list" if not value else "holds only blank strings"


def _python_list(text: str) -> list[Any] | None:
    """A list written as a Python literal (``['a', 'b']``), or None when ``text`` is not one."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return None
    return value if isinstance(value, list) else None


class UniqueIds:
    """Refuses an id seen before: two examples (or passages) under one id overwrite each other's
    predictions, resume state or retrieval hits, so one of them silently disappears."""

    def __init__(self, what: str = "id"):
        self.what = what
        self._first: dict[str, str] = {}

    def add(self, value: str, row: Row) -> None:
        first = self._first.setdefault(value, row.where)
        if first != row.where:
            raise DataError(f"{row.where}: duplicate {self.what} {value!r} (first at {first}; "
                            f"each {self.what} must be unique)")


def require_columns(display: str, record: dict[str, Any], columns: dict[str, str | None],
                    section: str = "dataset") -> None:
    """Fail on the first record if a mapped column is missing, listing the columns that exist."""
    for role, column in columns.items():
        if column is not None and column not in record:
            raise DataError(
                f"{display}: no column {column!r} for {role} (columns: {', '.join(map(str, record))}; "
                f"map yours with {section}.fields.{role}=...)"
            )
