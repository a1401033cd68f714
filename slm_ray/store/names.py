"""The one check every name that becomes a folder passes (experiment, model, dataset, retriever,
corpus, sweep and trial names): a name that could leave the output root, hide as a dot-folder or
break a file system is refused before anything is written."""

from __future__ import annotations

import re

#: Long enough for a trial name with a few grid axes; short enough that the name plus the suffix
#: of a moved-aside folder (``.replaced-<time>``) stays under the 255 bytes of common file systems.
MAX_NAME_LENGTH = 160
_ALLOWED = re.compile(r"[A-Za-z0-9][A-Za-z0-9._=+-]*")
RULE = f"letters, digits and . _ = + - only, starting with a letter or digit, no '..', at most {MAX_NAME_LENGTH} characters"


def name_problem(value: str) -> str | None:
    """Why ``value`` cannot be a folder name, or None when it can."""
    if not value:
        return "is empty"
    if len(value.encode("utf-8")) > MAX_NAME_LENGTH:
        return f"is {len(value.encode('utf-8'))} characters long (at most {MAX_NAME_LENGTH})"
    if "/" in value or "\\" in value:
        return "contains a path separator"
    if ".." in value:
        return "contains '..'"
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        return "contains a control character (a newline?)"
    if not _ALLOWED.fullmatch(value):
        return "is not a safe folder name"
    return None


def check_name(value: str) -> str:
    """``value`` if it is a safe folder name; else ValueError saying why and what is valid."""
    problem = name_problem(value)
    if problem is not None:
        raise ValueError(f"{problem} ({RULE})")
    return value


def safe_name(text: str) -> str:
    """``text`` turned into a safe folder name: other characters become ``_``, and a long name keeps
    its start and a hash of the whole, so that two long names stay distinct."""
    from slm_ray.store.fingerprints import stable_hash

    name = re.sub(r"[^A-Za-z0-9._=+-]+", "_", text).strip("_")
    name = re.sub(r"\.{2,}", ".", name)
    if not name or not name[0].isalnum():
        name = "t" + name
    if len(name) > MAX_NAME_LENGTH:
        name = f"{name[:MAX_NAME_LENGTH - 13]}-{stable_hash(text, 12)}"
    return name
