"""Secret masking, key by key: credentials under any spelling are masked (camelCase, kebab-case,
UPPER_CASE), the project's own keys about tokens and lookup keys are not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import pytest

from slm_ray.composition import compose_config, group_options
from slm_ray.redaction import MASK, is_secret_key, mask_secrets

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
    "top_k", "k", "retriever.k", "rrf_k", "TOKENIZERS_PARALLELISM", "RAY_AUTH_MODE", "enable_thinking",
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


# --- one place for every record: overrides, the sweep's plan, the run's files (issue 19, class 2) ----------

OVERRIDE_TOKEN = "hf_plantedOverrideToken123"
ENV_TOKEN = "hf_plantedEnvironmentToken456"


@pytest.mark.parametrize("override, shown", [
    (f"+model.chat_template_kwargs.hf_token={OVERRIDE_TOKEN}", "+model.chat_template_kwargs.hf_token=***"),
    (f"++tracker.api_key='{OVERRIDE_TOKEN}'", "++tracker.api_key=***"),
    (f"model.chat_template_kwargs={{hf_token: {OVERRIDE_TOKEN}, enable_thinking: false}}",
     "model.chat_template_kwargs={hf_token: ***, enable_thinking: false}"),
    (f"model.chat_template_kwargs={{password: '{OVERRIDE_TOKEN}'}}", "model.chat_template_kwargs={password: ***}"),
    ("retriever.k=5", "retriever.k=5"),
    ("model.max_new_tokens=1234567", "model.max_new_tokens=1234567"),
    ("+model.chat_template_kwargs.top_k=50", "+model.chat_template_kwargs.top_k=50"),
    ("model.path=/models/tokenizer_dir", "model.path=/models/tokenizer_dir"),
])
def test_an_override_is_recorded_without_its_secret(override: str, shown: str) -> None:
    from slm_ray.redaction import mask_override

    assert mask_override(override) == shown


def test_secrets_of_the_environment_are_masked_in_any_text(monkeypatch: pytest.MonkeyPatch) -> None:
    from slm_ray.redaction import env_secrets, redact

    monkeypatch.setenv("HF_TOKEN", ENV_TOKEN)
    monkeypatch.setenv("MY_SERVICE_PASSWORD", "planted-password")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")  # a setting about tokens, not a secret
    monkeypatch.setenv("SOME_SECRET_FLAG", "true")  # too short and too common to search for
    assert {ENV_TOKEN, "planted-password"} <= env_secrets() and "false" not in env_secrets()
    assert redact(f"GET /x?t={ENV_TOKEN} with planted-password: true") == "GET /x?t=*** with ***: true"
    assert mask_secrets({"path": f"s3://b/{ENV_TOKEN}/x", "sample": True}) == {"path": "s3://b/***/x", "sample": True}


def test_the_sweep_plan_records_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """sweep.json (``to_json``), the trial records (``describe``) and ``--cfg`` (``render``): the issue's
    override in a sweep file's ``overrides``, and one given on the command line inside a dict."""
    from slm_ray.sweeps.spec import load_sweep

    monkeypatch.chdir(tmp_path)
    path = tmp_path / "secret.yaml"
    path.write_text(f"""
name: secret
overrides: [dataset.limit=2, tracker=none, "+model.chat_template_kwargs.hf_token={OVERRIDE_TOKEN}"]
grid:
  model: [tiny_llama]
  model.temperature: [0.0, 0.5]
""")
    plan = load_sweep(path, ["+model.chat_template_kwargs.extra={password: sk-planted-cli-value}"])
    recorded = json.dumps(plan.to_json()) + plan.render()
    assert OVERRIDE_TOKEN not in recorded and "sk-planted-cli-value" not in recorded
    assert "+model.chat_template_kwargs.hf_token=***" in plan.to_json()["overrides"]
    assert "+model.chat_template_kwargs.hf_token=***" in plan.to_json()["trials"][1]["overrides"]
    # the trials themselves still get the real values
    assert plan.trials[0].config.model.chat_template_kwargs["hf_token"] == OVERRIDE_TOKEN


def test_a_secret_grid_value_never_names_a_trial_folder() -> None:
    from slm_ray.sweeps.spec import trial_name_for

    cfg = compose_config(["model=tiny_llama"])
    names = {trial_name_for(cfg, {"model.chat_template_kwargs": {"api_key": f"sk-planted-{i}"}}) for i in (1, 2)}
    assert len(names) == 2 and not any("planted" in name for name in names), names


def test_a_run_writes_no_secret_of_its_overrides_or_environment(tmp_path: Path, shared_cache: Path) -> None:
    """config.json, inputs.json, run.log, results, predictions and the console, for the override the
    issue names and a secret in the environment; a rerun with another token is the same run."""
    import os
    import subprocess
    import sys

    args = [sys.executable, "-m", "slm_ray.run", "model=tiny_llama", "tracker=none", "dataset.limit=2",
            "experiment.output_dir=out", f"experiment.cache_dir={shared_cache}",
            f"+model.chat_template_kwargs.hf_token={OVERRIDE_TOKEN}",
            "+model.chat_template_kwargs.extra={api_key: sk-planted-dict-value}"]
    env = {**os.environ, "HF_TOKEN": ENV_TOKEN, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    files = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {"config.json", "inputs.json", "run.log", "results.json"} <= {p.name for p in files}
    for text in [done.stdout + done.stderr, *(p.read_text(errors="replace") for p in files)]:
        for value in (OVERRIDE_TOKEN, ENV_TOKEN, "sk-planted-dict-value"):
            assert value not in text
    inputs = json.loads((tmp_path / "out" / "tiny_llama_nq_no_context" / "inputs.json").read_text())
    assert inputs["settings"]["model"]["chat_template_kwargs"]["hf_token"] == MASK
    again = subprocess.run([*args[:-2], "+model.chat_template_kwargs.hf_token=hf_aRotatedToken789",
                            "+model.chat_template_kwargs.extra={api_key: sk-another-value}"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "is complete" in again.stderr + again.stdout, again.stderr


def test_cfg_and_errors_print_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from slm_ray.run import main as run_main

    secret = [f"+model.chat_template_kwargs.hf_token={OVERRIDE_TOKEN}"]
    assert run_main(["--cfg", "all", "model=tiny_llama", *secret]) == 0
    assert run_main(["model=tiny_llama", f"model.chat_template_kwargs={{hf_token:{OVERRIDE_TOKEN}"]) == 2
    assert run_main(["model=tiny_llama", *secret, "dataset.limit=true"]) == 2
    text = capsys.readouterr()
    assert "hf_token" in text.out and OVERRIDE_TOKEN not in text.out + text.err, text
