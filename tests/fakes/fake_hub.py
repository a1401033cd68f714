"""A **fake** Hugging Face hub for tests: local folders served as model repos on 127.0.0.1.

It is not the hub. It answers the few endpoints huggingface_hub 2.4's ``snapshot_download`` and
``hf_hub_download`` use, with the headers they read, so that a real download runs against it:

- ``GET /api/models/{repo}/revision/{rev}`` (or without ``/revision/{rev}``: main): the repo's
  id and commit (``sha``);
- ``GET /api/models/{repo}/tree/{rev}?recursive=...``: the files (path, size, oid, an ``lfs`` entry
  for weights), in pages of ``page_size`` linked by a ``Link: <...>; rel="next"`` header;
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: the file, with ``X-Repo-Commit``, ``ETag`` (and
  ``X-Linked-Etag`` / ``X-Linked-Size`` for weights, as the hub sends for LFS files) and
  ``Content-Length``.

``rev`` is ``main`` or the repo's commit, a hash of its files. An unknown repo is a 404 with
``X-Error-Code: RepoNotFound``, an unknown file ``EntryNotFound``, as the hub answers. Every request
is recorded in ``requests`` (method, path), so tests can count downloads. Use it as a context
manager; point huggingface_hub at ``url`` with HF_ENDPOINT (read when huggingface_hub is imported,
so in a subprocess).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".onnx", ".gguf")


class FakeHub:
    """Serves ``repos`` ({"org/name": folder}) as hub model repos on a free port of 127.0.0.1."""

    def __init__(self, repos: dict[str, Path], page_size: int = 5) -> None:
        self.repos = {repo: Path(folder) for repo, folder in repos.items()}
        self.page_size = page_size
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._files: dict[str, dict[str, _File]] = {}
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FakeHub":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def downloads(self, repo: str | None = None) -> list[str]:
        """The files fetched with GET so far, as ``org/name/file``, of one repo or of all."""
        with self._lock:
            paths = [unquote(p) for m, p in self.requests if m == "GET" and "/resolve/" in p]
        found = []
        for path in paths:
            name, _, rest = path.lstrip("/").partition("/resolve/")
            if repo in (None, name):
                found.append(f"{name}/{rest.split('/', 1)[1]}")  # rest is {rev}/{file}
        return found

    # --- the repos' content (read once: the folders do not change while served) -----------------

    def files(self, repo: str) -> dict[str, "_File"]:
        with self._lock:
            if repo not in self._files:
                folder = self.repos[repo]
                self._files[repo] = {p.relative_to(folder).as_posix(): _File.of(p)
                                     for p in sorted(folder.rglob("*")) if p.is_file()}
            return self._files[repo]

    def commit(self, repo: str) -> str:
        digest = hashlib.sha1()
        for name, file in self.files(repo).items():
            digest.update(f"{name}\0{file.git_oid}\n".encode())
        return digest.hexdigest()

    def record(self, method: str, path: str) -> None:
        with self._lock:
            self.requests.append((method, path))


@dataclass(frozen=True)
class _File:
    path: Path
    size: int
    git_oid: str
    sha256: str

    @classmethod
    def of(cls, path: Path) -> "_File":
        data = path.read_bytes()
        return cls(path, len(data), _git_oid(data), hashlib.sha256(data).hexdigest())


def _git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_HEAD(self) -> None:  # noqa: N802 - the stdlib's naming
            self._answer(head=True)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(head=False)

        # --- routing ------------------------------------------------------------------------

        def _answer(self, head: bool) -> None:
            split = urlsplit(self.path)
            path, query = unquote(split.path), parse_qs(split.query)
            hub.record(self.command, split.path)
            parts = path.strip("/").split("/")
            if parts[:2] == ["api", "models"] and len(parts) == 4:  # repo_info without a revision: main
                if self._known("/".join(parts[2:4]), "main"):
                    self._json({"id": "/".join(parts[2:4]), "sha": hub.commit("/".join(parts[2:4])), "private": False})
            elif parts[:2] == ["api", "models"] and len(parts) >= 6 and parts[4] in ("revision", "tree"):
                repo, rev = "/".join(parts[2:4]), parts[5]
                if self._known(repo, rev):
                    if parts[4] == "revision":
                        self._json({"id": repo, "sha": hub.commit(repo), "private": False})
                    else:
                        self._tree(repo, "/".join(parts[6:]), query)
            elif len(parts) >= 5 and parts[2] == "resolve":
                repo, rev, name = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
                if self._known(repo, rev):
                    self._file(repo, name, head)
            else:
                self._error(404, "NotFound", f"no such endpoint on the fake hub: {path}")

        def _known(self, repo: str, rev: str) -> bool:
            if repo not in hub.repos:
                # The message quotes the request's Authorization header back, as a careless proxy
                # might: tests use it to check that no token reaches the user's terminal.
                self._error(404, "RepoNotFound", f"Repository {repo} not found "
                                                 f"(auth: {self.headers.get('Authorization', 'none')})")
                return False
            if rev not in ("main", hub.commit(repo)):
                self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
                return False
            return True

        # --- answers ------------------------------------------------------------------------

        def _tree(self, repo: str, under: str, query: dict[str, list[str]]) -> None:
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            entries: list[dict[str, Any]] = []
            folders: set[str] = set()
            for name, file in hub.files(repo).items():
                if under and not name.startswith(under.rstrip("/") + "/"):
                    continue
                rest = name[len(under.rstrip("/")) + 1:] if under else name
                if "/" in rest and not recursive:
                    folders.add(rest.split("/", 1)[0])
                    continue
                for depth in range(1, rest.count("/") + 1):
                    folders.add("/".join(rest.split("/")[:depth]))
                entry: dict[str, Any] = {"type": "file", "path": name, "size": file.size, "oid": file.git_oid}
                if name.endswith(WEIGHT_SUFFIXES):
                    entry["lfs"] = {"oid": file.sha256, "size": file.size, "pointerSize": 134}
                entries.append(entry)
            prefix = under.rstrip("/") + "/" if under else ""
            entries += [{"type": "directory", "path": prefix + f, "size": 0, "oid": _git_oid(f.encode())}
                        for f in sorted(folders)]
            start = int(query.get("cursor", ["0"])[0])
            page = entries[start:start + hub.page_size]
            headers = {}
            if start + hub.page_size < len(entries):
                host, port = self.server.server_address[:2]
                rev = urlsplit(self.path).path.split("/tree/", 1)[1].split("/")[0]
                nxt = (f"http://{host}:{port}/api/models/{repo}/tree/{rev}{'/' + quote(under) if under else ''}"
                       f"?recursive={str(recursive)}&cursor={start + hub.page_size}")
                headers["Link"] = f'<{nxt}>; rel="next"'
            self._json(page, headers)

        def _file(self, repo: str, name: str, head: bool) -> None:
            commit = hub.commit(repo)
            file = hub.files(repo).get(name)
            if file is None:
                self._error(404, "EntryNotFound", f"{name} does not exist in {repo}", {"X-Repo-Commit": commit})
                return
            self.send_response(200)
            self.send_header("X-Repo-Commit", commit)
            if name.endswith(WEIGHT_SUFFIXES):  # an LFS file: the hub names its sha256 and size
                self.send_header("ETag", f'"{file.sha256}"')
                self.send_header("X-Linked-Etag", f'"{file.sha256}"')
                self.send_header("X-Linked-Size", str(file.size))
            else:
                self.send_header("ETag", f'"{file.git_oid}"')
            self.send_header("Content-Length", str(file.size))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if not head:
                self.wfile.write(file.path.read_bytes())

        def _json(self, body: Any, headers: dict[str, str] | None = None, status: int = 200) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)

        def _error(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
            self._json({"error": message}, {"X-Error-Code": code, "X-Error-Message": message, **(headers or {})},
                       status)

    return Handler
