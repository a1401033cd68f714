"""Retrieval indexes shared through S3 (``experiment.index_store``), so a cluster builds each once.

Layout under ``<index_store>/<key>/`` (``<key>`` is the local cache folder's name, ``index_key``):
each upload fills a folder of its own, ``<generation>/`` (a time and a random suffix), and the
marker ``complete.json`` is written last, naming that generation and its files. One PUT replaces an
S3 object atomically, so a reader finds either no marker or one whose files were all uploaded first;
two processes uploading the same key at once fill two generations and the last marker wins, never a
mix of both. A superseded generation is left where it is: a reader may be downloading it.

A reader downloads into the cache entry's staging folder (``slm_ray.store.cache_entry``), checks the
files against the index's own manifest (CRC-32, written by the builder) and only then lets the
entry be renamed into place: a killed download leaves a staging folder that never counts, and a
damaged or partial copy is ignored (the index is built here and uploaded again).

S3 access (client, retries, one-line redacted errors, atomic downloads) is ``slm_ray.data.storage``'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from slm_ray.data.storage import download_object, s3_client, s3_errors, split_s3_uri

log = logging.getLogger("slm_ray.retrieval")

#: Written last under ``<index_store>/<key>/``: an upload without it is not there yet.
MARKER = "complete.json"
FORMAT = 1
_NOT_FOUND = {"404", "NoSuchKey", "NotFound"}


@dataclass(frozen=True)
class IndexStore:
    """An ``s3://bucket/prefix`` folder holding one sub-folder per index key."""

    uri: str

    @classmethod
    def of(cls, uri: str | None) -> IndexStore | None:
        """The store of the setting ``experiment.index_store`` (None when unset: local only)."""
        return cls(uri.rstrip("/")) if uri else None

    def folder(self, key: str) -> str:
        """Where index ``key`` lives, as the index command's line and the logs name it."""
        return f"{self.uri}/{key}/"

    def _object_key(self, *parts: str) -> str:
        prefix = split_s3_uri(self.uri)[1]
        return "/".join(part for part in (prefix, *parts) if part)

    def _uri(self, *parts: str) -> str:
        return f"s3://{split_s3_uri(self.uri)[0]}/{self._object_key(*parts)}"

    @property
    def bucket(self) -> str:
        return split_s3_uri(self.uri)[0]

    # -- reading -----------------------------------------------------------------------------------

    def marker(self, key: str, client: Any | None = None) -> dict[str, Any] | None:
        """The completion marker of ``key``'s upload; None when there is none (or it is unreadable).
        A missing bucket or missing credentials raise the one-line ``StorageError``."""
        client = client or s3_client(self.uri)
        with s3_errors(client, self._uri(key, MARKER), ".", "download"):
            return _read_marker(client, self.bucket, self._object_key(key, MARKER))

    def download(self, key: str, staging: Path) -> bool:
        """Fill the empty folder ``staging`` with the stored copy of index ``key``, checked against
        its manifest; False (``staging`` emptied again) when there is no complete, sound copy."""
        from slm_ray.store.cache_manifest import verify_manifest

        client = s3_client(self.uri)
        marker = self.marker(key, client)
        if marker is None:
            return False
        started = time.perf_counter()
        generation, files = marker["generation"], marker["files"]
        with s3_errors(client, self._uri(key, generation), staging, "download"):
            missing = _download_files(client, self, key, generation, files, staging)
        problem = missing or verify_manifest(staging)
        if problem is not None:
            log.warning("stored copy of index %s is unusable (%s); building it here", self.folder(key), problem)
            clear_folder(staging)
            return False
        log.info("downloaded index %s: %d files, %.1f MB in %.1fs", self.folder(key), len(files),
                 sum(files.values()) / 1e6, time.perf_counter() - started)
        return True

    # -- writing -----------------------------------------------------------------------------------

    def upload(self, key: str, folder: Path) -> str:
        """Upload the finished index ``folder`` as a new generation of ``key``, the marker last;
        returns the store folder it went to."""
        client = s3_client(self.uri)
        generation = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{uuid.uuid4().hex[:8]}"
        files = _files(folder)
        started = time.perf_counter()
        with s3_errors(client, self._uri(key, generation), folder, "upload"):
            for name in files:
                _upload_file(client, folder / name, self.bucket, self._object_key(key, generation, name))
            marker = {"format": FORMAT, "key": key, "generation": generation, "files": files,
                      "uploaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            client.put_object(Bucket=self.bucket, Key=self._object_key(key, MARKER),
                              Body=json.dumps(marker, indent=2).encode(), ContentType="application/json")
        log.info("uploaded index %s: %d files, %.1f MB in %.1fs", self.folder(key), len(files),
                 sum(files.values()) / 1e6, time.perf_counter() - started)
        return self.folder(key)


def holds_complete(index_store: str | None, key: str) -> bool:
    """Whether ``index_store`` (the setting; None: no store) holds a complete upload of index ``key``:
    its build downloads it, so nothing of it is made from the driver first."""
    store = IndexStore.of(index_store)
    return store is not None and store.marker(key) is not None


def _read_marker(client: Any, bucket: str, object_key: str) -> dict[str, Any] | None:
    """The parsed marker, None when absent or not one of ours; other errors go to ``s3_errors``."""
    from botocore.exceptions import ClientError

    try:
        body = client.get_object(Bucket=bucket, Key=object_key)["Body"].read()
    except ClientError as exc:
        if str(exc.response.get("Error", {}).get("Code", "")) in _NOT_FOUND:  # NoSuchBucket is an error
            return None
        raise
    try:
        marker = json.loads(body)
        files = marker["files"]
        if marker.get("format") != FORMAT or not isinstance(marker.get("generation"), str):
            raise ValueError("unknown format")
        if not isinstance(files, dict) or not all(_safe_name(n) and isinstance(s, int) for n, s in files.items()):
            raise ValueError("bad file list")
    except (ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring the unreadable marker s3://%s/%s (%s)", bucket, object_key, exc)
        return None
    return marker


def _safe_name(name: str) -> bool:
    """A relative path inside the index folder: a marker never writes outside the staging folder."""
    path = PurePosixPath(name)
    return bool(name) and not path.is_absolute() and ".." not in path.parts


def _download_files(client: Any, store: IndexStore, key: str, generation: str, files: dict[str, int],
                    staging: Path) -> str | None:
    """Download every file of a generation into ``staging``; why not, when one is gone."""
    from botocore.exceptions import ClientError

    for name, size in files.items():
        try:
            download_object(client, store._uri(key, generation, name), size, staging / name)
        except ClientError as exc:
            if str(exc.response.get("Error", {}).get("Code", "")) not in _NOT_FOUND:
                raise
            return f"{name}: missing from {store._uri(key, generation)}/"
    return None


def _upload_file(client: Any, path: Path, bucket: str, object_key: str) -> None:
    """boto3's managed upload (multipart above 8 MB: index files reach tens of GB). It wraps S3's
    error in S3UploadFailedError; the ClientError under it is what ``s3_errors`` turns into a line."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import ClientError

    try:
        client.upload_file(str(path), bucket, object_key)
    except S3UploadFailedError as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ClientError):
            raise cause from None
        raise


def _files(folder: Path) -> dict[str, int]:
    """Relative POSIX name -> size of every file under ``folder``, sorted (the manifest among them)."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = Path(root) / name
            found[path.relative_to(folder).as_posix()] = path.stat().st_size
    return dict(sorted(found.items()))


def clear_folder(folder: Path) -> None:
    """Remove what a failed download left in a staging folder, keeping the folder."""
    for child in folder.iterdir():
        shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
