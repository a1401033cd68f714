"""Where dataset files come from: local paths as given, ``s3://`` objects through a local cache.

A sweep starts many workers that read the same file, so an S3 object is downloaded once per version
(its ETag names the cache folder) and reused after that; a changed object lands in a new folder, so
stale bytes are never read. Downloads go to a temporary file that is renamed into place only after
its size is checked, so the cache never holds a partial file. Every failure becomes a one-line
``StorageError`` that says what to fix. boto3 is imported only when an ``s3://`` URI is resolved.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from slm_ray.errors import DataError, StorageError

logger = logging.getLogger("slm_ray.storage")

S3_SCHEME = "s3://"
DEFAULT_REGION = "us-east-1"
PROGRESS_MIN_BYTES = 1 << 20  # smaller files finish before a progress bar says anything useful
_CHUNK_BYTES = 1 << 20
STREAM_ATTEMPTS = 3  # a cut download is retried from the start, with backoff
_ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
_NOT_FOUND_CODES = {"404", "NoSuchKey", "NotFound"}
_DENIED_CODES = {"403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"}
_EXPECTED_FORM = "expected s3://bucket/key (a key naming one file)"
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment "
    "or in a .env file in the current directory"
)


@dataclass(frozen=True)
class _S3Object:
    bucket: str
    key: str

    @property
    def uri(self) -> str:
        return f"{S3_SCHEME}{self.bucket}/{self.key}"


def is_remote(uri: str | os.PathLike[str]) -> bool:
    """True for ``s3://`` URIs, the only remote scheme resolved here."""
    return os.fspath(uri).startswith(S3_SCHEME)


def load_env_file(path: str | Path = ".env") -> None:
    """Load ``KEY=value`` lines from a ``.env`` file into the environment.

    Variables already set in the environment win. Empty values are skipped: a line left blank in a
    copy of ``.env.example`` means "not set", not "set to empty" (which some clients, e.g. ClearML,
    read differently). A missing file is not an error: the environment alone may hold everything.
    """
    from dotenv import dotenv_values

    env_file = Path(path)
    if not env_file.is_file():
        return
    for name, value in dotenv_values(env_file).items():
        if value and name not in os.environ:
            os.environ[name] = value


def resolve_path(uri: str | os.PathLike[str], cache_dir: str | Path = ".cache/datasets") -> Path:
    """Return a local path for ``uri``: a local file as is (checked to exist), an ``s3://`` object
    downloaded into ``cache_dir`` (or reused from it when the object has not changed)."""
    text = os.fspath(uri)
    if is_remote(text):
        return _cached_download(_parse_s3_uri(text), Path(cache_dir))
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise StorageError(f"unsupported URI scheme {scheme!r} in {text}: use a local path or s3://bucket/key")
    path = Path(text).expanduser()
    if not path.exists():
        raise DataError(f"dataset file not found: {path}")
    return path


def _parse_s3_uri(uri: str) -> _S3Object:
    bucket, _, key = uri[len(S3_SCHEME) :].partition("/")
    if not bucket or not key or key.endswith("/"):
        raise StorageError(f"malformed S3 URI {uri!r}: {_EXPECTED_FORM}")
    return _S3Object(bucket, key)


def _cached_download(obj: _S3Object, cache_dir: Path) -> Path:
    load_env_file()
    client = _make_client(obj)
    with _storage_errors(client, obj, cache_dir):
        head = client.head_object(Bucket=obj.bucket, Key=obj.key)
        size, etag = head["ContentLength"], head.get("ETag", "")
        target = cache_dir / _cache_folder_name(obj, etag) / PurePosixPath(obj.key).name
        if target.is_file() and target.stat().st_size == size and _matches_etag(target, etag):
            logger.info("using cached %s for %s", target, obj.uri)
            return target
        if target.is_file():
            logger.warning("cached %s does not match %s (size or checksum); fetching it again", target, obj.uri)
        logger.info("downloading %s (%.1f MB)", obj.uri, size / 1e6)
        _download_atomically(client, obj, etag, size, target)
    return target


def _make_client(obj: _S3Object) -> Any:
    """An S3 client configured from the environment, with bounded retries and timeouts so a wrong
    endpoint fails within seconds instead of hanging a sweep."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import PartialCredentialsError

    # Custom endpoints (MinIO, Ceph, moto) rarely serve bucket-named hosts; path style works everywhere.
    custom_endpoint = any(os.environ.get(name) for name in _ENDPOINT_VARS)
    config = Config(
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        s3={"addressing_style": "path"} if custom_endpoint else None,
    )
    session = boto3.session.Session()  # a fresh session sees variables that .env just set
    try:
        return session.client("s3", region_name=session.region_name or DEFAULT_REGION, config=config)
    except PartialCredentialsError as exc:  # found at creation; no credentials at all only at the request
        raise StorageError(f"incomplete AWS credentials for {obj.uri} ({exc}): {_CREDENTIALS_HINT}") from exc
    except ValueError as exc:  # botocore rejects an endpoint URL it cannot parse
        raise StorageError(
            f"invalid S3 endpoint ({exc}): set AWS_ENDPOINT_URL to a full URL such as http://host:9000"
        ) from exc


def _cache_folder_name(obj: _S3Object, etag: str) -> str:
    uri_hash = hashlib.sha256(obj.uri.encode()).hexdigest()[:16]
    return f"{uri_hash}-{re.sub(r'[^A-Za-z0-9_-]', '', etag) or 'no-etag'}"


def _download_atomically(client: Any, obj: _S3Object, etag: str, size: int, target: Path) -> None:
    """Download into a temporary file beside ``target`` and rename it into place only once its size
    matches the HEAD's ContentLength; on any failure the temporary file is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        os.close(fd)
        for attempt in range(1, STREAM_ATTEMPTS + 1):
            try:
                with open(tmp, "wb") as out:
                    _fetch(client, obj, etag, size, out)
                break
            except _stream_errors() as exc:  # a cut connection: the next attempt starts over
                if attempt == STREAM_ATTEMPTS:
                    raise StorageError(f"download of {obj.uri} kept failing ({type(exc).__name__}) "
                                       f"after {attempt} attempts; run again") from None
                logger.warning("download of %s cut (%s); retrying", obj.uri, type(exc).__name__)
                time.sleep(0.5 * 2 ** (attempt - 1))
        received = tmp.stat().st_size
        if received != size:
            raise StorageError(f"incomplete download of {obj.uri}: got {received} of {size} bytes; run again")
        if not _matches_etag(tmp, etag):
            raise StorageError(f"checksum of {obj.uri} does not match its ETag {etag}: the download is corrupt; run again")
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _remove_if_empty(target.parent)
        raise


def _fetch(client: Any, obj: _S3Object, etag: str, size: int, out: IO[bytes]) -> None:
    """Stream the object into ``out`` with one GET. ``IfMatch`` makes S3 refuse (412) if the object
    changed since the HEAD, so the bytes always belong to the ETag that names the cache folder;
    boto3's managed download cannot promise that for objects under its multipart threshold."""
    from tqdm import tqdm

    conditions = {"IfMatch": etag} if etag else {}
    body = client.get_object(Bucket=obj.bucket, Key=obj.key, **conditions)["Body"]
    progress = tqdm(
        total=size,
        unit="B",
        unit_scale=True,
        desc=PurePosixPath(obj.key).name,
        disable=size < PROGRESS_MIN_BYTES,
        leave=False,
    )
    with closing(body), progress:
        for chunk in body.iter_chunks(_CHUNK_BYTES):
            out.write(chunk)
            progress.update(len(chunk))


def _stream_errors() -> tuple[type[BaseException], ...]:
    """Errors of a body stream cut mid-download, which a fresh GET can cure."""
    from botocore.exceptions import ConnectionError as BotoConnectionError
    from botocore.exceptions import ReadTimeoutError, ResponseStreamingError
    from urllib3.exceptions import ProtocolError

    return (ResponseStreamingError, ReadTimeoutError, BotoConnectionError, ProtocolError, ConnectionError)


def _matches_etag(path: Path, etag: str) -> bool:
    """For a single-part upload the ETag is the content's MD5: check it. Multipart ETags are not
    a plain digest, and then the size check is what we have."""
    digest = etag.strip('"')
    if not re.fullmatch(r"[0-9a-f]{32}", digest):
        return True
    md5 = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
    return md5.hexdigest() == digest


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty: an earlier complete download or a concurrent one lives there


@contextmanager
def _storage_errors(client: Any, obj: _S3Object, cache_dir: Path, action: str = "download") -> Iterator[None]:
    """Turn botocore and filesystem failures into one-line ``StorageError``s that say what to fix
    (``action``: the word for what failed, "download" or "upload")."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError
    from botocore.exceptions import ConnectionError as EndpointUnreachable

    endpoint = client.meta.endpoint_url
    direction, local = ("from", "into") if action == "download" else ("to", "from")
    try:
        yield
    except ClientError as exc:
        raise StorageError(_redact(_client_error_message(client, obj, exc))) from exc
    except NoCredentialsError as exc:
        raise StorageError(f"no AWS credentials found for {obj.uri}: {_CREDENTIALS_HINT}") from exc
    except EndpointUnreachable as exc:  # endpoint refused, DNS failure, connect timeout, proxy, TLS
        raise StorageError(
            _redact(f"cannot reach the S3 endpoint {endpoint}: {exc} (check AWS_ENDPOINT_URL and the network)")
        ) from exc
    except BotoCoreError as exc:  # read timeouts, streams cut mid-way
        raise StorageError(_redact(f"{action} of {obj.uri} {direction} {endpoint} failed: {exc}")) from exc
    except OSError as exc:  # cache folder not writable, disk full: the one line for write faults
        from slm_ray.errors import unwritable

        raise (unwritable(cache_dir, exc, "experiment.cache_dir")
               or StorageError(f"cannot {action} {obj.uri} {local} {cache_dir}: {exc}")) from exc


# --- the same client, errors and atomic download for other S3 users (the retrieval index store) --------


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/some/prefix/`` -> ("bucket", "some/prefix"): a folder, so the key may be empty."""
    bucket, _, key = uri[len(S3_SCHEME):].partition("/") if is_remote(uri) else ("", "", "")
    if not bucket:
        raise StorageError(f"malformed S3 URI {uri!r}: expected s3://bucket or s3://bucket/prefix")
    return bucket, key.strip("/")


def s3_client(uri: str) -> Any:
    """The client every S3 access uses (``.env`` read first), for the object or folder ``uri``."""
    load_env_file()
    return _make_client(_S3Object(*split_s3_uri(uri)))


@contextmanager
def s3_errors(client: Any, uri: str, local_dir: str | Path, action: str = "download") -> Iterator[None]:
    """One-line, redacted ``StorageError``s naming ``uri`` for any failure inside the block."""
    with _storage_errors(client, _S3Object(*split_s3_uri(uri)), Path(local_dir), action):
        yield


def download_object(client: Any, uri: str, size: int, target: Path) -> None:
    """Download the object ``uri`` of ``size`` bytes to ``target``: retried when cut, renamed into
    place only when whole. For objects that never change (no ETag condition)."""
    _download_atomically(client, _S3Object(*split_s3_uri(uri)), "", size, target)


def _client_error_message(client: Any, obj: _S3Object, exc: Any) -> str:
    error = exc.response.get("Error", {})
    code = str(error.get("Code", ""))
    if code == "NoSuchBucket" or (code in _NOT_FOUND_CODES and not _bucket_exists(client, obj.bucket)):
        return f"s3 bucket not found: {obj.bucket} (in {obj.uri}; check the bucket name and AWS_ENDPOINT_URL)"
    if code in _NOT_FOUND_CODES:
        return f"s3 object not found: {obj.uri} (check the bucket and key)"
    if code in _DENIED_CODES:
        return (
            f"access denied to {obj.uri} ({code}): check AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
            "and that they may read this object"
        )
    if code in {"412", "PreconditionFailed"}:
        return f"{obj.uri} changed while it was being downloaded: run again"
    return f"s3 request for {obj.uri} failed: {code} {error.get('Message', '')}".rstrip()


def _bucket_exists(client: Any, bucket: str) -> bool:
    """A HEAD answers a bare 404 for a missing key and a missing bucket alike, so ask the bucket;
    only the error path pays for this request."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as bucket_exc:
        return str(bucket_exc.response.get("Error", {}).get("Code")) not in _NOT_FOUND_CODES | {"NoSuchBucket"}
    except BotoCoreError:
        return True  # cannot tell: report the key, which is at least not wrong
    return True


def _redact(message: str) -> str:
    """Messages quote endpoints and server text; make sure no secret from the environment leaks."""
    from slm_ray.redaction import redact

    return redact(message)
