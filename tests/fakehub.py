"""A loopback stand-in for the Hugging Face Hub: the HTTP calls ``huggingface_hub`` makes to create a repo, upload
a folder in one commit and download files, answered from memory on 127.0.0.1.

It checks what a client can get wrong (a token on every write, a repo that exists, paths of the commit) and
nothing of the real Hub's validation, LFS/Xet storage or permissions. Clients need ``HF_ENDPOINT`` set to
``server.url`` before ``huggingface_hub`` is imported, and ``HF_HUB_DISABLE_XET=1``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


@dataclass
class Repo:
    files: dict[str, bytes] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)
    private: bool = False

    @property
    def head(self) -> str:
        return self.commits[-1] if self.commits else hashlib.sha1(b"empty").hexdigest()


class FakeHub:
    """``with FakeHub() as hub:`` serves on ``hub.url``; ``hub.repos`` holds what was pushed, ``hub.requests`` the
    calls ("METHOD path") in order, ``hub.tokens`` the bearer tokens writes came with."""

    def __init__(self) -> None:
        self.repos: dict[str, Repo] = {}
        self.requests: list[str] = []
        self.tokens: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> FakeHub:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(hub: FakeHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # quiet
            pass

        # --- plumbing ---------------------------------------------------------------------------------
        def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
            self.send_response(status)
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, payload: object, status: int = 200) -> None:
            self._send(status, json.dumps(payload).encode(), {"Content-Type": "application/json"})

        def _missing(self, code: str, message: str) -> None:
            self._send(404, json.dumps({"error": message}).encode(), {"X-Error-Code": code, "X-Error-Message": message})

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _authorised(self) -> bool:
            token = (self.headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not token:
                self._send(401, b'{"error": "Invalid credentials in Authorization header"}')
                return False
            hub.tokens.append(token)
            return True

        def _repo(self, repo_id: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._missing("RepoNotFound", f"Repository not found: {repo_id}")
            return repo

        # --- routes -----------------------------------------------------------------------------------
        def do_POST(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"POST {path}")
            body = self._body()
            if not self._authorised():
                return
            if path == "/api/repos/create":
                request = json.loads(body)
                repo_id = "/".join(filter(None, [request.get("organization"), request["name"]]))
                with hub._lock:
                    exists = repo_id in hub.repos
                    hub.repos.setdefault(repo_id, Repo(private=bool(request.get("private"))))
                if exists:
                    return self._json({"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"}, 409)
                return self._json({"url": f"{hub.url}/{repo_id}", "name": repo_id, "id": repo_id})
            if path == "/api/validate-yaml":
                return self._json({"errors": [], "warnings": []})
            if match := re.fullmatch(r"/api/models/(.+)/preupload/([^/]+)", path):
                if (repo := self._repo(match[1])) is None:
                    return
                files = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in json.loads(body)["files"]]
                return self._json({"files": files, "commitOid": repo.head})
            if match := re.fullmatch(r"/api/models/(.+)/commit/([^/]+)", path):
                if (repo := self._repo(match[1])) is None:
                    return
                return self._commit(match[1], repo, body)
            self._missing("EntryNotFound", f"no route POST {path}")

        def _commit(self, repo_id: str, repo: Repo, body: bytes) -> None:
            changes = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            with hub._lock:
                for change in changes:
                    value = change["value"]
                    if change["key"] == "file":
                        repo.files[value["path"]] = base64.b64decode(value["content"])
                    elif change["key"] == "deletedFile":
                        repo.files.pop(value["path"], None)
                    elif change["key"] != "header":
                        return self._send(400, f"unsupported commit entry {change['key']!r}".encode())
                digest = hashlib.sha1(json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in repo.files.items())).encode())
                repo.commits.append(digest.hexdigest())
            self._json({"commitUrl": f"{hub.url}/{repo_id}/commit/{repo.head}", "commitOid": repo.head, "pullRequestUrl": None})

        def do_GET(self) -> None:
            self._read()

        def do_HEAD(self) -> None:
            self._read()

        def _read(self) -> None:
            path = unquote(urlparse(self.path).path)
            hub.requests.append(f"{self.command} {path}")
            if match := re.fullmatch(r"/api/models/(.+?)(?:/revision/([^/]+))?", path):
                if (repo := self._repo(match[1])) is None:
                    return
                siblings = [{"rfilename": name} for name in sorted(repo.files)]
                return self._json({"id": match[1], "modelId": match[1], "sha": repo.head, "private": repo.private,
                                   "siblings": siblings, "tags": [], "downloads": 0, "likes": 0})
            if match := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
                if (repo := self._repo(match[1])) is None:
                    return
                data = repo.files.get(match[3])
                if data is None:
                    return self._missing("EntryNotFound", f"{match[3]} does not exist in {match[1]}")
                etag = hashlib.sha256(data).hexdigest()
                return self._send(200, data, {"ETag": f'"{etag}"', "X-Repo-Commit": repo.head,
                                              "Content-Type": "application/octet-stream"})
            self._missing("EntryNotFound", f"no route {self.command} {path}")

    return Handler
