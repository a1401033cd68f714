"""The tracker interface, the no-op tracker, and secret masking shared by every sink."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Mapping

MASK = "***"

#: The words of a key in any spelling: snake_case, kebab-case, camelCase, UPPER_CASE, APIKey.
WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+")
#: Environment variables whose values are secrets: an error message that quotes a server or a
#: library never shows them.
SECRET_ENV_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                   "CLEARML_API_SECRET_KEY")


def redact_env_secrets(message: str) -> str:
    """``message`` with the value of every secret environment variable (4+ characters) as ``***``."""
    import os

    for name in SECRET_ENV_VARS:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    return message


#: Words that make a key secret wherever they appear (clientSecret, AWS_SECRET_ACCESS_KEY, apikey).
SECRET_WORDS = frozenset({"secret", "secrets", "password", "passwords", "passwd", "passphrase", "credential",
                          "credentials", "authorization", "cookie", "apikey", "accesskey", "secretkey", "privatekey"})
#: "<word> key" is secret for these words only: api_key, x-api-key, privateKey, AWS_ACCESS_KEY_ID; not
#: the project's own model_key, index_key or a plain key.
KEY_QUALIFIERS = frozenset({"api", "access", "private", "secret", "session", "auth", "client", "encryption",
                            "signing", "master", "account"})
#: A key ending in "token" is secret (token, HF_TOKEN, accessToken, x-auth-token) unless it names a
#: vocabulary token (pad_token, eos_token). Plurals and longer keys are counts or ids, not secrets:
#: max_new_tokens, generated_tokens, eos_token_id, token_recall, tokenizer.
VOCABULARY_TOKENS = frozenset({"pad", "eos", "bos", "unk", "sep", "cls", "mask", "special", "stop", "start", "end"})


def is_secret_key(key: object) -> bool:
    """Whether a value under ``key`` looks like a credential, in any case convention."""
    words = [w.lower() for w in WORD.findall(str(key))]
    if SECRET_WORDS.intersection(words):
        return True
    if any(first in KEY_QUALIFIERS and second == "key" for first, second in zip(words, words[1:])):
        return True
    return bool(words) and words[-1] == "token" and (len(words) == 1 or words[-2] not in VOCABULARY_TOKENS)


def mask_secrets(data: Any) -> Any:
    """A copy of nested config data with values under secret-looking keys replaced by ``***``."""
    if isinstance(data, Mapping):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else mask_secrets(v)) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [mask_secrets(v) for v in data]
    return data


class Tracker:
    """Receives a run's parameters, running scalars, final metrics and files. Does nothing itself."""

    def log_params(self, params: Mapping[str, Any]) -> None:
        """The run's resolved config (already masked)."""

    def log_scalars(self, title: str, values: Mapping[str, float], step: int) -> None:
        """Running values (metrics, throughput, memory) at ``step`` examples done."""

    def log_final(self, metrics: Mapping[str, float]) -> None:
        """Final single values, shown in the compare view."""

    def log_artifact(self, name: str, path: Path) -> None:
        """A result file to keep with the run."""

    def close(self) -> str | None:
        """Finish; returns a note for the user (e.g. where an offline session is), or None."""
        return None


NullTracker = Tracker
