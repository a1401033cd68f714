"""slm_ray.data.storage against a real S3 protocol endpoint (moto's server on localhost)."""

from __future__ import annotations

import logging
import os
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError

from slm_ray.data import storage
from slm_ray.data.storage import is_remote, load_env_file, resolve_path
from slm_ray.errors import DataError, StorageError

JSONL = b'{"question": "who?", "answers": ["R\xc3\xb6ntgen"]}\n{"question": "when?", "answers": ["1901"]}\n'


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    """Run in an empty directory (no stray .env) and undo what load_env_file writes to os.environ."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    saved = dict(os.environ)
    yield cwd
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def fetch_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Records each real download (the HEAD alone does not count)."""
    calls: list[str] = []
    real_fetch = storage._fetch

    def counting_fetch(client: Any, obj: Any, *args: Any) -> None:
        calls.append(obj.uri)
        real_fetch(client, obj, *args)

    monkeypatch.setattr(storage, "_fetch", counting_fetch)
    return calls


def files_under(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file()] if folder.exists() else []


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- s3: downloads and the cache ---------------------------------------------------------------


def test_download_is_cached_until_the_object_changes(s3_client, s3_bucket, cache, fetch_calls, caplog):
    caplog.set_level(logging.INFO, logger="slm_ray.storage")
    uri = f"s3://{s3_bucket}/qa/dev.jsonl"
    s3_client.put_object(Bucket=s3_bucket, Key="qa/dev.jsonl", Body=JSONL)

    first = resolve_path(uri, cache_dir=cache)
    assert first.read_bytes() == JSONL
    assert first.name == "dev.jsonl" and first.is_relative_to(cache)
    assert fetch_calls == [uri]
    assert f"downloading {uri}" in caplog.text

    assert resolve_path(uri, cache_dir=cache) == first
    assert fetch_calls == [uri], "an unchanged object must come from the cache"
    assert "using cached" in caplog.text

    s3_client.put_object(Bucket=s3_bucket, Key="qa/dev.jsonl", Body=b'{"question": "new"}\n')
    changed = resolve_path(uri, cache_dir=cache)
    assert changed != first and changed.read_bytes() == b'{"question": "new"}\n'
    assert fetch_calls == [uri, uri], "a new ETag must lead to a new download"
    assert not [path for path in files_under(cache) if path.name.endswith(".part")]


def test_truncated_cache_file_is_downloaded_again(s3_client, s3_bucket, cache, fetch_calls):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    cached = resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    cached.write_bytes(JSONL[:10])

    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL
    assert len(fetch_calls) == 2


def test_multipart_download_with_progress(s3_client, s3_bucket, cache):
    body = os.urandom(9 * 1024 * 1024)  # over boto3's 8 MB threshold: ranged GETs, and a progress bar
    s3_client.put_object(Bucket=s3_bucket, Key="big.bin", Body=body)

    assert resolve_path(f"s3://{s3_bucket}/big.bin", cache_dir=cache).read_bytes() == body


# --- s3: errors --------------------------------------------------------------------------------


def test_missing_key_names_it_and_caches_nothing(s3_bucket, cache):
    uri = f"s3://{s3_bucket}/missing/dev.jsonl"
    with pytest.raises(StorageError, match=f"s3 object not found: {uri} \\(check the bucket and key\\)"):
        resolve_path(uri, cache_dir=cache)
    assert files_under(cache) == []


def test_missing_bucket_names_it(s3_env, cache):
    with pytest.raises(StorageError, match="s3 bucket not found: no-such-bucket-3f9a "):
        resolve_path("s3://no-such-bucket-3f9a/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


def test_unreachable_endpoint_fails_fast_naming_it(s3_env, monkeypatch, cache):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    started = time.monotonic()
    with pytest.raises(StorageError, match=f"cannot reach the S3 endpoint {endpoint}: .*AWS_ENDPOINT_URL"):
        resolve_path("s3://bucket/dev.jsonl", cache_dir=cache)
    assert time.monotonic() - started < 10
    assert files_under(cache) == []


@pytest.mark.parametrize(
    "present",
    [{}, {"AWS_SECRET_ACCESS_KEY": "s3cr3t-do-not-print"}, {"AWS_ACCESS_KEY_ID": "AKIAEXAMPLE"}],
    ids=["none", "secret-only", "key-id-only"],
)
def test_missing_credentials_say_what_to_set(s3_env, monkeypatch, cache, present):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    for name, value in present.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(StorageError, match="AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY .*\\.env") as raised:
        resolve_path("s3://bucket/dev.jsonl", cache_dir=cache)
    assert "s3cr3t" not in str(raised.value)
    assert "\n" not in str(raised.value)


def test_object_changed_during_download_is_refused(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    real_fetch = storage._fetch

    def fetch_after_overwrite(*args: Any) -> None:
        s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=b"another version\n")
        real_fetch(*args)

    monkeypatch.setattr(storage, "_fetch", fetch_after_overwrite)
    with pytest.raises(StorageError, match="changed while it was being downloaded"):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


def test_access_denied_says_so(s3_client, s3_bucket, cache, monkeypatch):
    # moto grants everything, so the GET is refused the way S3 refuses it when a policy allows
    # HEAD (s3:ListBucket) but not s3:GetObject.
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)

    def denied_fetch(*args: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "Access Denied"}}, "GetObject")

    monkeypatch.setattr(storage, "_fetch", denied_fetch)
    with pytest.raises(StorageError, match=f"access denied to s3://{s3_bucket}/dev.jsonl .*AWS_ACCESS_KEY_ID"):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


# --- s3: interrupted downloads leave nothing behind --------------------------------------------


def test_download_cut_midway_leaves_no_partial_file(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    real_fetch = storage._fetch

    def cut_fetch(client: Any, obj: Any, etag: str, size: int, out: Any) -> None:
        out.write(JSONL[:20])
        out.flush()
        raise ResponseStreamingError(error="connection reset by peer")

    monkeypatch.setattr(storage, "_fetch", cut_fetch)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    with pytest.raises(StorageError, match=f"download of s3://{s3_bucket}/dev.jsonl kept failing .* after 3 attempts"):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []

    monkeypatch.setattr(storage, "_fetch", real_fetch)  # a later real download is not confused
    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL


def test_a_download_cut_once_is_retried_and_completes(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    real_fetch, calls = storage._fetch, []

    def flaky_fetch(client: Any, obj: Any, etag: str, size: int, out: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            out.write(JSONL[:20])
            raise ResponseStreamingError(error="connection reset by peer")
        real_fetch(client, obj, etag, size, out)

    monkeypatch.setattr(storage, "_fetch", flaky_fetch)
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: None)
    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL
    assert len(calls) == 2


def test_bytes_that_do_not_match_the_etag_are_refused(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    corrupt = bytes([JSONL[0] ^ 1]) + JSONL[1:]  # same size, one bit flipped
    monkeypatch.setattr(storage, "_fetch", lambda client, obj, etag, size, out: out.write(corrupt))
    with pytest.raises(StorageError, match="does not match its ETag"):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


def test_a_corrupted_cached_file_is_fetched_again(s3_client, s3_bucket, cache):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    cached = resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    cached.write_bytes(bytes([JSONL[0] ^ 1]) + JSONL[1:])  # same size: only the checksum can tell
    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL


def test_short_download_is_rejected(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    monkeypatch.setattr(storage, "_fetch", lambda client, obj, etag, size, out: out.write(JSONL[:20]))

    with pytest.raises(StorageError, match=f"incomplete download of .*: got 20 of {len(JSONL)} bytes"):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


def test_interrupt_during_download_leaves_no_partial_file(s3_client, s3_bucket, cache, monkeypatch):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)

    def interrupted_fetch(client: Any, obj: Any, etag: str, size: int, out: Any) -> None:
        out.write(JSONL[:20])
        raise KeyboardInterrupt

    monkeypatch.setattr(storage, "_fetch", interrupted_fetch)
    with pytest.raises(KeyboardInterrupt):
        resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache)
    assert files_under(cache) == []


# --- .env --------------------------------------------------------------------------------------


def test_credentials_from_dotenv_file(s3_client, s3_bucket, cache, monkeypatch, isolated):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    (isolated / ".env").write_text("AWS_ACCESS_KEY_ID=testing\nAWS_SECRET_ACCESS_KEY=testing\n")

    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL


def test_environment_wins_over_dotenv(s3_client, s3_bucket, cache, isolated):
    s3_client.put_object(Bucket=s3_bucket, Key="dev.jsonl", Body=JSONL)
    # Applied, this would send the download to a dead endpoint.
    (isolated / ".env").write_text(f"AWS_ENDPOINT_URL=http://127.0.0.1:{closed_port()}\n")

    assert resolve_path(f"s3://{s3_bucket}/dev.jsonl", cache_dir=cache).read_bytes() == JSONL


def test_load_env_file_sets_only_unset_nonempty_variables(monkeypatch, tmp_path):
    monkeypatch.setenv("SLM_RAY_TEST_SET", "from-env")
    monkeypatch.delenv("SLM_RAY_TEST_NEW", raising=False)
    monkeypatch.delenv("SLM_RAY_TEST_BLANK", raising=False)
    env_file = tmp_path / "custom.env"
    env_file.write_text("SLM_RAY_TEST_SET=from-file\nSLM_RAY_TEST_NEW=from-file\nSLM_RAY_TEST_BLANK=\n")

    load_env_file(env_file)

    assert os.environ["SLM_RAY_TEST_SET"] == "from-env"
    assert os.environ["SLM_RAY_TEST_NEW"] == "from-file"
    assert "SLM_RAY_TEST_BLANK" not in os.environ


def test_load_env_file_missing_is_silent(tmp_path):
    load_env_file(tmp_path / "absent.env")


# --- local paths and URI forms -----------------------------------------------------------------


def test_local_file_is_returned_as_path(tmp_path):
    data = tmp_path / "dev.jsonl"
    data.write_bytes(JSONL)
    assert resolve_path(str(data)) == data
    assert resolve_path(data) == data
    assert not is_remote(data)


def test_missing_local_file_names_it(tmp_path):
    missing = tmp_path / "missing.jsonl"
    with pytest.raises(DataError, match=f"dataset file not found: {missing}$"):
        resolve_path(missing)


@pytest.mark.parametrize("uri", ["s3://", "s3://bucket", "s3://bucket/", "s3:///key", "s3://bucket/dir/"])
def test_malformed_s3_uri_names_the_expected_form(uri, cache):
    with pytest.raises(StorageError, match=f"malformed S3 URI '{uri}': expected s3://bucket/key"):
        resolve_path(uri, cache_dir=cache)


def test_unsupported_scheme_is_refused(cache):
    with pytest.raises(StorageError, match="unsupported URI scheme 'gs' in gs://bucket/dev.jsonl"):
        resolve_path("gs://bucket/dev.jsonl", cache_dir=cache)


def test_is_remote():
    assert is_remote("s3://bucket/key")
    assert not is_remote("data/dev.jsonl")
