"""A local server speaking the Hugging Face Hub's HTTP API, serving repos from local folders.

Enough of the API for huggingface_hub 2.4 (`model_info`, `list_repo_tree`, `hf_hub_download`,
`snapshot_download`) and transformers 5 (`from_pretrained("org/name")`): tests point `HF_ENDPOINT`
(or `endpoint=`) at it, so the real download code runs without the internet.

    with HubServer({"org/tiny": folder, "org/two": {"main": a, "v2": b}}) as hub:
        download_model("org/tiny", models_dir, endpoint=hub.url)

Knobs for tests: `drop_after` cuts a file's connection after some bytes, `log` records every
request, `bytes_served` counts body bytes. Never sends `X-Xet-Hash`: downloads stay plain HTTP.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

# Files the hub keeps in LFS (its default .gitattributes), plus anything over 10 MiB.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".onnx", ".gguf", ".model", ".npz")
_LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 64 * 1024
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")

RepoSource = Path | Mapping[str, Path]
LogEntry = tuple[str, str, dict[str, str]]  # method, path with query, headers (lower-case names)


@dataclass(frozen=True)
class RepoFile:
    path: str
    size: int
    blob_id: str  # git blob sha1, the hub's ETag for regular files
    sha256: str | None  # set for LFS files, whose ETag is the sha256
    local: Path

    @property
    def etag(self) -> str:
        return self.sha256 or self.blob_id


@dataclass(frozen=True)
class Revision:
    commit: str
    files: dict[str, RepoFile]


@dataclass
class _Drop:
    offset: int
    times: int | None  # None: every request


@dataclass
class _Repo:
    id: str
    revisions: dict[str, Revision]  # branch/tag name -> revision
    default: str = "main"

    def find(self, rev: str) -> Revision | None:
        if rev in self.revisions:
            return self.revisions[rev]
        return next((r for r in self.revisions.values() if r.commit == rev), None)


def _index_folder(repo_id: str, folder: Path) -> Revision:
    files: dict[str, RepoFile] = {}
    for local in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = local.relative_to(folder).as_posix()
        if rel.startswith(".") or "/." in rel:
            continue  # .cache/ and friends are not part of a repo
        data = local.read_bytes()
        blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        lfs = rel.endswith(LFS_SUFFIXES) or len(data) > _LFS_MIN_SIZE
        sha256 = hashlib.sha256(data).hexdigest() if lfs else None
        files[rel] = RepoFile(path=rel, size=len(data), blob_id=blob, sha256=sha256, local=local)
    listing = "\n".join(f"{f.path} {f.blob_id}" for f in files.values())
    commit = hashlib.sha1(f"{repo_id}\n{listing}".encode()).hexdigest()
    return Revision(commit=commit, files=files)


@dataclass
class _State:
    repos: dict[str, _Repo]
    gated: set[str]
    token: str | None
    lock: threading.Lock = field(default_factory=threading.Lock)
    log: list[LogEntry] = field(default_factory=list)
    served: Counter[tuple[str, str]] = field(default_factory=Counter)
    drops: dict[tuple[str, str], _Drop] = field(default_factory=dict)


class HubServer:
    """Hub API on 127.0.0.1:<free port>, in a background thread. `url` is valid after `start()`."""

    def __init__(
        self, repos: Mapping[str, RepoSource], *, gated: Iterable[str] = (), token: str | None = None
    ) -> None:
        self._state = _State(repos={}, gated=set(gated), token=token)
        for repo_id, source in repos.items():
            self.add_repo(repo_id, source)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    def add_repo(self, repo_id: str, source: RepoSource) -> None:
        """Serve `source` (one folder as "main", or {revision: folder}) as `repo_id`."""
        folders = {"main": source} if isinstance(source, Path) else dict(source)
        revisions = {rev: _index_folder(repo_id, Path(folder)) for rev, folder in folders.items()}
        default = "main" if "main" in revisions else next(iter(revisions))
        self._state.repos[repo_id] = _Repo(id=repo_id, revisions=revisions, default=default)

    def commit(self, repo_id: str, revision: str = "main") -> str:
        return self._state.repos[repo_id].revisions[revision].commit

    def start(self) -> str:
        state = self._state

        class Handler(_Handler):
            hub = state

        server = self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        # A short poll interval: stop() waits up to one interval.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="hub-server", daemon=True
        )
        self._thread.start()
        self.url = f"http://127.0.0.1:{server.server_address[1]}"
        return self.url

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> HubServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # Test knobs ---------------------------------------------------------------------------------

    def drop_after(self, repo_id: str, filename: str, offset: int, *, times: int | None = 1) -> None:
        """Cut the connection of the next `times` GETs of a file (None: all) once byte `offset` of
        the file is sent; a GET starting at or past `offset` gets headers and no body."""
        with self._state.lock:
            self._state.drops[(repo_id, filename)] = _Drop(offset=offset, times=times)

    def clear_drops(self) -> None:
        with self._state.lock:
            self._state.drops.clear()

    @property
    def log(self) -> list[LogEntry]:
        """(method, path with query, headers by lower-case name) of every request, oldest first."""
        return self._state.log

    def requests(self, method: str | None = None, contains: str = "") -> list[LogEntry]:
        """The logged requests with this method (any if None) whose path contains `contains`."""
        return [r for r in self.log if (method is None or r[0] == method) and contains in r[1]]

    @property
    def bytes_served(self) -> int:
        return sum(self._state.served.values())

    def bytes_served_for(self, repo_id: str, filename: str) -> int:
        return self._state.served[(repo_id, filename)]

    def reset_stats(self) -> None:
        with self._state.lock:
            self._state.log.clear()
            self._state.served.clear()


class _Handler(BaseHTTPRequestHandler):
    hub: _State
    protocol_version = "HTTP/1.1"  # keep-alive like the real hub; every answer has a Content-Length

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the request log is `HubServer.log`; stderr stays quiet

    def do_GET(self) -> None:
        self._dispatch(head=False)

    def do_HEAD(self) -> None:
        self._dispatch(head=True)

    def _dispatch(self, *, head: bool) -> None:
        url = urlsplit(self.path)
        with self.hub.lock:
            self.hub.log.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if parts[:2] == ["api", "models"]:
            self._api(parts[2:], query)
        elif parts == ["api", "agent-harnesses"]:  # huggingface_hub's user-agent telemetry registry
            self._json({"standardEnvVars": [], "harnesses": {}})
        else:
            self._resolve(parts, head=head)

    # /api/models/{repo}[/revision/{rev} | /tree/{rev}[/{path}]]
    def _api(self, parts: list[str], query: dict[str, str]) -> None:
        repo, rest = self._match_repo(parts)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        if not rest:
            return self._info(repo, repo.default)
        if rest[0] == "revision" and len(rest) == 2:
            return self._info(repo, rest[1])
        if rest[0] == "tree" and len(rest) >= 2:
            recursive = query.get("recursive", "").lower() in ("1", "true")
            return self._tree(repo, rest[1], "/".join(rest[2:]), recursive=recursive)
        self._error(404, None, "Not found")

    def _info(self, repo: _Repo, rev: str) -> None:
        revision = repo.find(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        files = revision.files.values()
        siblings = [{"rfilename": f.path, "size": f.size, "blobId": f.blob_id} | _lfs(f) for f in files]
        body = {
            "_id": revision.commit[:24], "id": repo.id, "modelId": repo.id, "sha": revision.commit,
            "private": False, "gated": "manual" if repo.id in self.hub.gated else False, "disabled": False,
            "lastModified": "2024-01-01T00:00:00.000Z", "createdAt": "2024-01-01T00:00:00.000Z",
            "library_name": "transformers", "tags": ["transformers"], "downloads": 0, "likes": 0,
            "config": _config_summary(revision), "siblings": siblings,
        }
        self._json(body, commit=revision.commit)

    def _tree(self, repo: _Repo, rev: str, prefix: str, *, recursive: bool) -> None:
        revision = repo.find(rev)
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        base = f"{prefix}/" if prefix else ""
        paths = [p for p in revision.files if p.startswith(base)]
        if prefix and not paths:
            message = f"{prefix} does not exist on {rev}"
            return self._error(404, "EntryNotFound", message, commit=revision.commit)
        entries: dict[str, dict[str, Any]] = {}
        for path in paths:
            rel = path[len(base):].split("/")
            depth = len(rel) if recursive else 1
            for i in range(1, min(depth, len(rel) - 1) + 1):  # folders on the way
                folder = base + "/".join(rel[:i])
                entries.setdefault(folder, {"type": "directory", "path": folder, "oid": _oid(folder)})
            if recursive or len(rel) == 1:
                f = revision.files[path]
                entry = {"type": "file", "path": path, "size": f.size, "oid": f.blob_id}
                entries[path] = entry | _lfs(f, tree=True)
        self._json(list(entries.values()), commit=revision.commit)

    # /{repo}/resolve/{rev}/{file}
    def _resolve(self, parts: list[str], *, head: bool) -> None:
        repo, rest = self._match_repo(parts)
        if repo is None or len(rest) < 3 or rest[0] != "resolve":
            return self._error(404, "RepoNotFound" if repo is None else None, "Not found")
        revision = repo.find(rest[1])
        if revision is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rest[1]}")
        if not self._authorized(repo):
            return
        filename = "/".join(rest[2:])
        f = revision.files.get(filename)
        if f is None:
            return self._error(404, "EntryNotFound", f"{filename} does not exist", commit=revision.commit)
        self._send_file(repo, revision, f, head=head)

    def _authorized(self, repo: _Repo) -> bool:
        if repo.id not in self.hub.gated:
            return True
        auth = self.headers.get("Authorization", "")
        if self.hub.token is not None and auth == f"Bearer {self.hub.token}":
            return True
        status = 403 if auth else 401
        message = f"Access to model {repo.id} is restricted. You must have access to it and be authenticated."
        self._error(status, "GatedRepo", message)
        return False

    def _send_file(self, repo: _Repo, revision: Revision, f: RepoFile, *, head: bool) -> None:
        start, end = 0, f.size - 1
        match = _RANGE.match(self.headers.get("Range", "").strip())
        status = HTTPStatus.OK
        if match and (match[1] or match[2]):
            if match[1]:
                start, end = int(match[1]), min(int(match[2] or end), end)
            else:  # suffix range: the last N bytes
                start = max(0, f.size - int(match[2]))
            if start >= f.size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{f.size}")
                self.send_header("Content-Length", "0")
                return self.end_headers()
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", f'"{f.etag}"')
        self.send_header("X-Repo-Commit", revision.commit)
        if f.sha256:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        if not head:
            self._send_body(repo, f, start, end + 1)

    def _send_body(self, repo: _Repo, f: RepoFile, start: int, stop: int) -> None:
        cut = self._take_drop(repo.id, f.path)
        limit = stop if cut is None else max(start, min(stop, cut))
        with f.local.open("rb") as fh:
            fh.seek(start)
            pos = start
            while pos < limit:
                chunk = fh.read(min(_CHUNK, limit - pos))
                self.wfile.write(chunk)
                pos += len(chunk)
                with self.hub.lock:
                    self.hub.served[(repo.id, f.path)] += len(chunk)
        if cut is not None and limit < stop:
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)  # the client sees a body shorter than promised
            self.close_connection = True

    def _take_drop(self, repo_id: str, path: str) -> int | None:
        with self.hub.lock:
            drop = self.hub.drops.get((repo_id, path))
            if drop is None:
                return None
            if drop.times is not None:
                drop.times -= 1
                if drop.times <= 0:
                    del self.hub.drops[(repo_id, path)]
            return drop.offset

    def _match_repo(self, parts: list[str]) -> tuple[_Repo | None, list[str]]:
        for n in (2, 1):  # "org/name" ids first, then bare names like "gpt2"
            repo = self.hub.repos.get("/".join(parts[:n])) if len(parts) >= n else None
            if repo is not None:
                return repo, parts[n:]
        return None, []

    def _json(self, body: Any, *, commit: str | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _error(self, status: int, code: str | None, message: str, *, commit: str | None = None) -> None:
        data = json.dumps({"error": message}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)


def _lfs(f: RepoFile, *, tree: bool = False) -> dict[str, Any]:
    if f.sha256 is None:
        return {}
    key = "oid" if tree else "sha256"  # the tree says "oid", model_info's siblings say "sha256"
    return {"lfs": {key: f.sha256, "size": f.size, "pointerSize": 134}}


def _oid(path: str) -> str:
    return hashlib.sha1(path.encode()).hexdigest()


def _config_summary(revision: Revision) -> dict[str, Any]:
    f = revision.files.get("config.json")
    if f is None:
        return {}
    try:
        config = json.loads(f.local.read_text())
    except ValueError:
        return {}
    return {k: config[k] for k in ("architectures", "model_type") if k in config}
