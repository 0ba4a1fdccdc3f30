"""A small Hugging Face Hub-compatible HTTP server for tests: only what huggingface_hub's client calls for HfStore.

State is in memory: repos with commits (full file trees), branches and tags. It answers like the Hub where the client
depends on it: every file is "regular" at preupload, a stale ``parentCommit`` gets 412, an existing tag or branch
409, unknown repos/revisions/files 404 with ``X-Error-Code``, and ref names are checked with git's rules (400).
``server.faults`` injects failures (status codes, or sleeps for timeouts), before or after a request takes effect;
``server.requests`` records every request for counting. ``echo_auth=True`` makes every error answer quote the
request's Authorization header, as a careless server might: what a client must never pass on.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from local_http import QuietHTTPServer

_SHA = re.compile(r"[0-9a-f]{40}")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def valid_ref(name: str) -> bool:
    """git check-ref-format, roughly: what the Hub refuses with 400."""
    bad = (
        not name
        or name.startswith(("/", "-", "."))
        or name.endswith(("/", ".", ".lock"))
        or any(s in name for s in ("..", "//", "@{", "/."))
        or any(c in name for c in " ~^:?*[\\\x7f")
        or any(ord(c) < 32 for c in name)
        or name == "@"
    )
    return not bad


@dataclass
class Commit:
    oid: str
    parent: str | None
    files: dict[str, bytes]
    title: str
    message: str
    date: str


@dataclass
class Repo:
    repo_id: str
    commits: dict[str, Commit] = field(default_factory=dict)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def resolve(self, rev: str) -> str | None:
        if rev in self.branches:
            return self.branches[rev]
        if rev in self.tags:
            return self.tags[rev]
        if rev in self.commits:
            return rev
        if len(rev) >= 7 and re.fullmatch(r"[0-9a-f]+", rev):
            hits = [oid for oid in self.commits if oid.startswith(rev)]
            return hits[0] if len(hits) == 1 else None
        return None


@dataclass
class Fault:
    """Make ``count`` requests matching ``method`` and ``path`` (regex on the unquoted path) fail.

    ``status``: answer this HTTP status; ``delay``: sleep this long first (longer than the client timeout = timeout).
    ``after``: let the request take effect first, then fail (a lost response).
    """

    method: str
    path: str
    status: int = 500
    delay: float = 0.0
    after: bool = False
    count: int = 1


class FakeHub:
    def __init__(self, token: str | None = None, echo_auth: bool = False) -> None:
        self.token = token
        self.echo_auth = echo_auth
        self.repos: dict[str, Repo] = {}
        self.lock = threading.RLock()
        self.faults: list[Fault] = []
        self.requests: list[tuple[str, str]] = []
        self._counter = 0
        self._httpd: QuietHTTPServer | None = None

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> str:
        hub = self

        class Handler(_Handler):
            server_hub = hub

        self._httpd = QuietHTTPServer(Handler)
        return self._httpd.serve_in_background()

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return self._httpd.url

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.stop()

    # -- state helpers ------------------------------------------------------------------------------------------

    def new_commit(self, repo: Repo, parent: str | None, files: dict[str, bytes], title: str, message: str) -> str:
        self._counter += 1
        oid = hashlib.sha1(f"{repo.repo_id}:{self._counter}:{time.time_ns()}".encode()).hexdigest()
        date = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        repo.commits[oid] = Commit(oid, parent, files, title, message, date)
        return oid

    def create_repo(self, repo_id: str) -> Repo:
        repo = Repo(repo_id)
        oid = self.new_commit(repo, None, {".gitattributes": b"*.safetensors filter=lfs\n"}, "initial commit", "")
        repo.branches["main"] = oid
        self.repos[repo_id] = repo
        return repo

    def take_fault(self, method: str, path: str) -> Fault | None:
        with self.lock:
            for fault in self.faults:
                if fault.count > 0 and fault.method == method and re.search(fault.path, path):
                    fault.count -= 1
                    return fault
        return None


class HttpError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, body: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.code, self.body = status, message, code, body


class _Handler(BaseHTTPRequestHandler):
    server_hub: FakeHub
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive + delayed ACKs add 40 ms to every request

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_HEAD(self) -> None:
        self._dispatch("HEAD")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _dispatch(self, method: str) -> None:
        hub = self.server_hub
        raw = urlsplit(self.path)
        segments = [unquote(s) for s in raw.path.split("/")[1:]]
        self.query = parse_qs(raw.query)
        length = int(self.headers.get("Content-Length") or 0)
        self.body = self.rfile.read(length) if length else b""
        path = "/" + "/".join(segments)
        with hub.lock:
            hub.requests.append((method, path))
        fault = hub.take_fault(method, path)
        if fault is not None and fault.delay:
            time.sleep(fault.delay)
        echo = f" (request had Authorization: {self.headers.get('Authorization')})" if hub.echo_auth else ""
        if fault is not None and not fault.after:
            return self._send_json(fault.status, {"error": f"injected {fault.status}{echo}"})
        try:
            status, payload, headers = self._route(method, segments)
        except HttpError as err:
            extra = {"X-Error-Code": err.code} if err.code else {}
            extra["X-Error-Message"] = err.message + echo
            return self._send_json(err.status, err.body or {"error": err.message + echo}, extra)
        if fault is not None:  # the request took effect, but the answer is lost
            return self._send_json(fault.status, {"error": f"injected {fault.status} after effect{echo}"})
        if isinstance(payload, bytes):
            self._send(status, payload, headers, "application/octet-stream")
        else:
            self._send_json(status, payload, headers)

    def _send_json(self, status: int, payload: object, headers: dict[str, str] | None = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers or {}, "application/json")

    def _send(self, status: int, body: bytes, headers: dict[str, str], content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        for key, value in headers.items():
            self.send_header(key, value)
        if "Content-Length" not in headers:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _check_write(self) -> None:
        token = self.server_hub.token
        if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
            raise HttpError(401, "Invalid credentials in Authorization header")

    def _repo(self, ns: str, name: str) -> Repo:
        repo = self.server_hub.repos.get(f"{ns}/{name}")
        if repo is None:
            raise HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _rev(self, repo: Repo, rev: str) -> str:
        oid = repo.resolve(rev)
        if oid is None:
            raise HttpError(404, f"Invalid rev id: {rev}", "RevisionNotFound")
        return oid

    # -- routes -------------------------------------------------------------------------------------------------

    def _route(self, method: str, s: list[str]) -> tuple[int, object, dict[str, str]]:
        hub = self.server_hub
        with hub.lock:
            if s[:3] == ["api", "repos", "create"] and method == "POST":
                return self._create_repo()
            if s[:2] == ["api", "validate-yaml"] and method == "POST":
                return 200, {"errors": [], "warnings": []}, {}
            if len(s) >= 4 and s[:2] == ["api", "models"]:
                repo = self._repo(s[2], s[3])
                return self._api(method, repo, s[4:])
            if len(s) >= 5 and s[2] == "resolve" and method in ("GET", "HEAD"):
                repo = self._repo(s[0], s[1])
                return self._resolve(repo, s[3], "/".join(s[4:]))
        raise HttpError(404, f"no route for {method} /{'/'.join(s)}")

    def _create_repo(self) -> tuple[int, object, dict[str, str]]:
        self._check_write()
        payload = json.loads(self.body or b"{}")
        repo_id = f"{payload.get('organization') or 'user'}/{payload['name']}"
        url = f"{self.server_hub.url}/{repo_id}"
        if repo_id in self.server_hub.repos:
            raise HttpError(409, "You already created this model repo", body={"error": "exists", "url": url})
        self.server_hub.create_repo(repo_id)
        return 200, {"url": url, "name": repo_id}, {}

    def _api(self, method: str, repo: Repo, rest: list[str]) -> tuple[int, object, dict[str, str]]:
        head = rest[0] if rest else ""
        if method == "GET" and (not rest or head == "revision"):
            oid = self._rev(repo, rest[1] if len(rest) > 1 else "main")
            files = repo.commits[oid].files
            siblings = [{"rfilename": p} for p in sorted(files)]
            return 200, {"id": repo.repo_id, "sha": oid, "private": False, "siblings": siblings}, {}
        if method == "GET" and head == "tree":
            return self._tree(repo, rest[1], "/".join(rest[2:]))
        if method == "GET" and head == "refs":
            refs = {
                "branches": [
                    {"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in repo.branches.items()
                ],
                "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": c} for n, c in repo.tags.items()],
                "converts": [],
                "pullRequests": [],
            }
            return 200, refs, {}
        if method == "GET" and head == "commits":
            return self._commits(repo, rest[1] if len(rest) > 1 else "main")
        if method == "POST" and head == "preupload":
            return self._preupload(repo, rest[1])
        if method == "POST" and head == "commit":
            return self._commit(repo, rest[1])
        if method == "POST" and head == "tag":
            return self._create_ref(repo, repo.tags, rest[1], "tag")
        if method == "DELETE" and head == "tag":
            self._check_write()
            if rest[1] not in repo.tags:
                raise HttpError(404, f"Tag {rest[1]} not found", "RevisionNotFound")
            del repo.tags[rest[1]]
            return 200, {}, {}
        if method == "POST" and head == "branch":
            return self._create_ref(repo, repo.branches, rest[1], "branch")
        raise HttpError(404, f"no route for {method} api/models/{repo.repo_id}/{'/'.join(rest)}")

    def _tree(self, repo: Repo, rev: str, prefix: str) -> tuple[int, object, dict[str, str]]:
        files = repo.commits[self._rev(repo, rev)].files
        recursive = self.query.get("recursive", ["false"])[0].lower() in ("1", "true")
        base = prefix.rstrip("/") + "/" if prefix else ""
        entries: dict[str, dict] = {}
        for path, data in sorted(files.items()):
            if not path.startswith(base):
                continue
            rest = path[len(base) :]
            if "/" in rest and not recursive:
                folder = base + rest.split("/")[0]
                entries[folder] = {"type": "directory", "path": folder, "oid": "0" * 40, "size": 0}
                continue
            entries[path] = {"type": "file", "path": path, "size": len(data), "oid": git_blob_sha1(data)}
        if prefix and not entries:
            raise HttpError(404, f"{prefix} not found", "EntryNotFound")
        return 200, list(entries.values()), {}

    def _commits(self, repo: Repo, rev: str) -> tuple[int, object, dict[str, str]]:
        oid: str | None = self._rev(repo, rev)
        history = []
        while oid is not None:
            commit = repo.commits[oid]
            history.append(
                {
                    "id": commit.oid,
                    "authors": [{"user": "test"}],
                    "date": commit.date,
                    "title": commit.title,
                    "message": commit.message,
                }
            )
            oid = commit.parent
        return 200, history, {}

    def _preupload(self, repo: Repo, rev: str) -> tuple[int, object, dict[str, str]]:
        self._check_write()
        files = repo.commits[self._rev(repo, rev)].files
        asked = json.loads(self.body)["files"]
        answer = [
            {
                "path": f["path"],
                "uploadMode": "regular",
                "shouldIgnore": False,
                "oid": git_blob_sha1(files[f["path"]]) if f["path"] in files else None,
            }
            for f in asked
        ]
        return 200, {"files": answer}, {}

    def _commit(self, repo: Repo, branch: str) -> tuple[int, object, dict[str, str]]:
        self._check_write()
        if branch not in repo.branches:
            raise HttpError(404, f"Branch {branch} not found", "RevisionNotFound")
        lines = [json.loads(line) for line in self.body.splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HttpError(400, "first NDJSON line must be the header")
        header = lines[0]["value"]
        head = repo.branches[branch]
        parent = header.get("parentCommit")
        if parent is not None and not head.startswith(parent):
            raise HttpError(412, f"A commit has happened since. Parent {parent} is not the head {head}")
        files = dict(repo.commits[head].files)
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {p: d for p, d in files.items() if not p.startswith(folder)}
            else:
                raise HttpError(400, f"unsupported commit operation {key} (this server only takes regular files)")
        oid = self.server_hub.new_commit(repo, head, files, header.get("summary", ""), header.get("description", ""))
        repo.branches[branch] = oid
        url = f"{self.server_hub.url}/{repo.repo_id}/commit/{oid}"
        return 200, {"commitUrl": url, "commitOid": oid, "pullRequestUrl": None}, {}

    def _create_ref(self, repo: Repo, refs: dict[str, str], rev: str, kind: str) -> tuple[int, object, dict[str, str]]:
        self._check_write()
        payload = json.loads(self.body or b"{}")
        name = payload["tag"] if kind == "tag" else rev
        start = (payload.get("startingPoint") or "main") if kind == "branch" else rev
        if not valid_ref(name):
            raise HttpError(400, f"Invalid {kind} name {name!r}")
        oid = self._rev(repo, start)
        if name in refs:
            raise HttpError(409, f"{kind} {name} already exists")
        refs[name] = oid
        return 200, {}, {}

    def _resolve(self, repo: Repo, rev: str, path: str) -> tuple[int, object, dict[str, str]]:
        oid = self._rev(repo, rev)
        files = repo.commits[oid].files
        if path not in files:
            raise HttpError(404, f"Entry not found: {path}", "EntryNotFound")
        data = files[path]
        etag = f'"{git_blob_sha1(data)}"'
        headers = {"X-Repo-Commit": oid, "ETag": etag, "Content-Length": str(len(data))}
        return 200, data, headers


def main() -> None:
    hub = FakeHub()
    print(hub.start(), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
