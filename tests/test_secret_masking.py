"""Secret masking, key by key: credentials under any spelling are masked (camelCase, kebab-case,
UPPER_CASE), the project's own keys about tokens and lookup keys are not."""

from __future__ import annotations

import json
from typing import Any, Iterator

import pytest

from slm_ray.composition import compose_config, group_options
from slm_ray.tracking.base import MASK, is_secret_key, mask_secrets

SECRET_KEYS = [
    "secret", "password", "token", "access_key", "api_key", "credentials", "credential",  # snake_case, as before
    "apiKey", "APIKey", "ApiKey", "apikey", "secretKey", "accessToken", "clientSecret", "privateKey",  # camelCase
    "sessionToken", "refreshToken", "idToken", "authToken",
    "AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "HF_TOKEN",  # UPPER
    "CLEARML_API_SECRET_KEY", "CLEARML_API_ACCESS_KEY", "GITHUB_TOKEN", "DB_PASSWORD",
    "x-api-key", "x-auth-token", "proxy-authorization", "client-secret",  # kebab-case, HTTP headers
    "Authorization", "Cookie", "hf_token", "wandb_api_key", "private_key_id", "encryptionKey", "passphrase",
    "AccountKey", "storage.account_key", "Secrets",
]

ORDINARY_KEYS = [
    "max_new_tokens", "tokens_per_second", "generated_tokens", "prompt_tokens", "max_prompt_tokens",
    "tokenizer", "key", "index_key", "model_key", "service_key", "value_key", "load_key", "retriever_key",
    "token_recall", "token_recall_ci_low", "eos_token_id", "pad_token_id", "stop_token_ids", "pad_token",
    "eos_token", "bos_token", "add_special_tokens", "skip_special_tokens", "gold_tokens", "predicted_tokens",
    "keys", "passages", "passage_separator", "max_tokens", "past_key_values", "monkey", "keyboard", "tokens",
]


@pytest.mark.parametrize("key", SECRET_KEYS)
def test_secret_keys_are_masked(key: str) -> None:
    assert is_secret_key(key)
    assert mask_secrets({"outer": [{key: "s3cr3t-value"}]}) == {"outer": [{key: MASK}]}


@pytest.mark.parametrize("key", ORDINARY_KEYS)
def test_ordinary_keys_are_kept(key: str) -> None:
    assert not is_secret_key(key)
    assert mask_secrets({key: 42}) == {key: 42}


def test_empty_secret_values_stay_visible() -> None:
    """An unset credential is shown as unset (None or ""), which helps debugging and leaks nothing."""
    assert mask_secrets({"apiKey": None, "HF_TOKEN": "", "password": "p"}) == {"apiKey": None, "HF_TOKEN": "",
                                                                               "password": MASK}


def _keys(data: Any) -> Iterator[str]:
    if isinstance(data, dict):
        for key, value in data.items():
            yield str(key)
            yield from _keys(value)
    elif isinstance(data, (list, tuple)):
        for value in data:
            yield from _keys(value)


def test_no_key_of_the_shipped_configs_is_masked() -> None:
    """Every option of every config group composed: none of the project's own keys looks secret, so
    config.json and ClearML show the whole config."""
    overrides = [[f"model={m}"] for m in group_options("model")]
    overrides += [["retriever=" + r, "experiment_mode=retriever_context"] for r in group_options("retriever")]
    overrides += [["dataset=simpleqa"], ["tracker=clearml", "tracker.tags=[a]"]]
    keys: set[str] = set()
    for combo in overrides:
        dump = json.loads(json.dumps(compose_config(combo).model_dump(by_alias=True)))  # tuples as lists
        assert mask_secrets(dump) == dump, combo
        keys.update(_keys(dump))
    assert {"max_new_tokens", "max_prompt_tokens", "path", "project"} <= keys
