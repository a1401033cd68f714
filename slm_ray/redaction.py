"""Which strings are secrets, decided in one place, and how every record hides them.

A secret is the value of an environment variable whose name looks like a credential (``HF_TOKEN``,
``AWS_SECRET_ACCESS_KEY``), or a value under a credential-looking key of a config or an override
(``+model.chat_template_kwargs.hf_token=...``, ``apiKey``, ``x-auth-token``). Everything that records
a config or an override (config.json, inputs.json, sweep.json, trial records, ``--cfg``, logs, the
console, ClearML) passes it through ``mask_secrets`` or ``mask_override`` / ``redact`` first.

Keys about tokens that are not credentials stay visible: ``max_new_tokens``, ``eos_token_id``,
``pad_token``, ``token_recall``, ``top_k``, ``retriever.k``, ``model_key``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any

MASK = "***"
#: Shorter values are not searched for in free text: "1", "true" or "en" would mask ordinary words.
MIN_SECRET_LENGTH = 6

#: The words of a key in any spelling: snake_case, kebab-case, camelCase, UPPER_CASE, APIKey.
WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
#: Words that make a key secret wherever they appear (clientSecret, AWS_SECRET_ACCESS_KEY, apikey).
SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwords", "passwd", "passphrase", "credential",
                          "credentials", "authorization", "cookie", "apikey", "accesskey", "secretkey", "privatekey"})
#: "<word> key" is secret for these words only: api_key, x-api-key, privateKey, AWS_ACCESS_KEY_ID; not
#: the project's own model_key, index_key, top_k or a plain key.
KEY_QUALIFIERS = frozenset({"api", "access", "private", "secret", "session", "auth", "client", "encryption",
                            "signing", "master", "account"})
#: A key ending in "token" is secret (token, HF_TOKEN, accessToken, x-auth-token) unless it names a
#: vocabulary token (pad_token, eos_token). Plurals and longer keys are counts or ids, not secrets:
#: max_new_tokens, generated_tokens, eos_token_id, token_recall, tokenizer.
VOCABULARY_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "stop", "start", "end"})


def is_secret_key(key: object) -> bool:
    """Whether a value under ``key`` (a config key, an override's last part, a variable name) looks
    like a credential, in any case convention."""
    words = [w.lower() for w in WORD.findall(str(key))]
    if SECRET_WORDS.intersection(words):
        return True
    if any(first in KEY_QUALIFIERS and second == "key" for first, second in zip(words, words[1:])):
        return True
    return bool(words) and words[-1] == "token" and (len(words) == 1 or words[-2] not in VOCABULARY_TOKENS)


def _searchable(value: str) -> bool:
    """Long enough to be searched for in text without masking ordinary words or numbers."""
    return len(value) >= MIN_SECRET_LENGTH and not value.isdigit() and value.lower() not in ("true", "false")


def env_secrets() -> set[str]:
    """The values of the environment's credential-looking variables (read now: a .env file loaded
    later adds its own)."""
    return {value for name, value in os.environ.items() if is_secret_key(name) and _searchable(value)}


def config_secrets(data: Any) -> set[str]:
    """The values under credential-looking keys anywhere in nested config data."""
    found: set[str] = set()
    if isinstance(data, Mapping):
        for key, value in data.items():
            if is_secret_key(key):
                found |= {str(leaf) for leaf in _leaves(value) if _searchable(str(leaf))}
            else:
                found |= config_secrets(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            found |= config_secrets(value)
    return found


def _leaves(value: Any) -> Iterable[Any]:
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _leaves(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _leaves(item)
    elif value not in (None, ""):
        yield value


def redact(text: str, known: Iterable[str] = ()) -> str:
    """``text`` with every secret of the environment, and every one of ``known``, as ``***``
    (longest first, so that a secret holding another is masked whole)."""
    for secret in sorted(env_secrets() | {s for s in known if _searchable(s)}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_secrets(data: Any, known: Iterable[str] = (), *, in_text: bool = True) -> Any:
    """A copy of nested config data with values under secret-looking keys replaced by ``***``, and
    (``in_text``) secrets of the environment and ``known`` masked inside every other string.
    A fingerprint passes ``in_text=False``: what the environment holds must not change a hash."""
    known = set(known)
    if isinstance(data, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else mask_secrets(v, known, in_text=in_text))
                for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_secrets(v, known, in_text=in_text) for v in data]
    if isinstance(data, str) and in_text:
        return redact(data, known)
    return data


def override_key(override: str) -> str:
    """The key an override sets: ``model`` for ``model=x``, ``dataset.limit`` for ``++dataset.limit=5``."""
    return override.split("=", 1)[0].lstrip("+~").strip()


def mask_override(override: str, known: Iterable[str] = ()) -> str:
    """``key=value`` as it may be recorded: the value of a credential-looking key as ``***``; secrets
    inside any other value (``model.chat_template_kwargs={hf_token: ...}``: pass the composed
    config's ``config_secrets`` as ``known``) masked where they occur."""
    key, equals, value = override.partition("=")
    if equals and is_secret_key(override_key(override).rsplit(".", 1)[-1]) and value.strip():
        return f"{key}={MASK}"
    return redact(override, set(known) | override_secrets([override]))


#: ``key: value`` inside an override's dict value (``{hf_token: abc, enable_thinking: false}``).
_DICT_ITEM = re.compile(r"""([\w.-]+)\s*:\s*('[^']*'|"[^"]*"|[^,{}\[\]]+)""")


def override_secrets(overrides: Iterable[str]) -> set[str]:
    """The values that overrides give to credential-looking keys (also inside a dict value), as
    written and unquoted: what to look for in text derived from them (an error message, Hydra's
    ``override_dirname``)."""
    found = set()
    for override in overrides:
        _, equals, value = override.partition("=")
        if not equals:
            continue
        pairs = [(override_key(override).rsplit(".", 1)[-1], value)] + _DICT_ITEM.findall(value)
        for key, given in pairs:
            if is_secret_key(key):
                found |= {c for c in (given.strip(), given.strip().strip("'\"")) if _searchable(c)}
    return found
