"""A stand-in for the Hugging Face Hub on 127.0.0.1, for offline tests of `hfmtl push`.

It speaks the endpoints huggingface_hub 2.4 calls for `HfApi.create_repo`, `create_branch`,
`upload_folder` (hf_xet installed: the streamed pipeline) and `ModelCard.validate`:

    POST /api/repos/create                          create a repo (409 if it exists: exist_ok handles it)
    POST /api/validate-yaml                         check a README's metadata (see `check_card_metadata`)
    POST /api/models/{repo}/preupload/{revision}    answer "regular" for every file: contents come inline
    POST /api/models/{repo}/commit/{revision}       NDJSON: a header line, then one base64 file per line
    POST /api/models/{repo}/branch/{branch}         create a branch from main
    POST /api/models/{repo}/discussions             open a pull request (create_pr=True), refs/pr/N
    GET  /api/models/{repo}/discussions/{num}       its details (create_pull_request reads them back)
    GET  /api/models/{repo}[/revision/{revision}]   repo info (create_repo asks after a 401/403)
    GET  /api/agent-harnesses                       huggingface_hub's once-a-day agent detection (best
                                                    effort): answered 404, so nothing is cached in HF_HOME

Write endpoints check ``Authorization: Bearer <token>`` against the server's `token` (401 otherwise),
as the Hub does.

Every request is recorded (method, path, headers, body); any other request gets a 404 and is listed
in `unexpected`, which the tests assert is empty. `fail` makes an endpoint answer an error status.

Example:
    >>> with FakeHub() as hub:                                  # doctest: +SKIP
    ...     ...  # point huggingface_hub at hub.url, push
    ...     assert hub.files("tester/model") == {...}
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

import yaml
from huggingface_hub import ModelCard
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

USER = "tester"  # the namespace of a repo created without one
# Pipeline types of huggingface.js (packages/tasks/src/pipelines.ts) that a text model may declare.
PIPELINE_TAGS = {
    "text-classification",
    "token-classification",
    "question-answering",
    "multiple-choice",
    "zero-shot-classification",
    "feature-extraction",
    "sentence-similarity",
    "fill-mask",
    "text-ranking",
    "other",
}


@dataclass
class Request:
    """One request as received; header names in lower case (HTTP's are case-insensitive)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Commit:
    repo_id: str
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]
    oid: str


@dataclass
class Repo:
    private: bool | None
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    pulls: int = 0


def check_card_metadata(content: str) -> list[str]:
    """What the fake server's validate-yaml rejects: metadata huggingface_hub cannot parse back
    (ModelCardData, the model-index into EvalResults), and fields with a wrong form."""
    errors = []
    match = re.match(r"^\s*---\r?\n([\s\S]*?)\r?\n---", content)
    if not match:
        return ["no YAML metadata block"]
    try:
        data = yaml.safe_load(match.group(1)) or {}
        ModelCard(content)  # the metadata and the model-index parse (raises on a broken model-index)
    except (yaml.YAMLError, ValueError) as err:
        return [f"metadata does not parse: {err}"]
    if not isinstance(data, dict):
        return ["metadata is not a mapping"]
    for key in ("base_model", "datasets"):
        values = data.get(key) or []
        for value in [values] if isinstance(values, str) else values:
            try:
                validate_repo_id(value)
            except HFValidationError:
                errors.append(f"{key}: {value!r} is not a repo id")
    if "pipeline_tag" in data and data["pipeline_tag"] not in PIPELINE_TAGS:
        errors.append(f"pipeline_tag: {data['pipeline_tag']!r} is not a pipeline type")
    if not all(isinstance(tag, str) for tag in data.get("tags") or []):
        errors.append("tags must be strings")
    for result in (data.get("model-index") or [{}])[0].get("results", []):
        for metric in result["metrics"]:
            if not isinstance(metric["value"], (int, float)):
                errors.append(f"model-index: metric value {metric['value']!r} is not a number")
    return errors


class FakeHub:
    """The server and what it received. Use as a context manager; `url` is its endpoint."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token  # None: any request is authorised
        self.requests: list[Request] = []
        self.unexpected: list[str] = []
        self.repos: dict[str, Repo] = {}
        self.commits: list[Commit] = []
        self.validated: list[str] = []  # README contents sent to validate-yaml
        self.fail: dict[str, int] = {}  # route name -> status to answer with
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        # a short poll interval: shutdown() waits for one, and each test starts and stops a server
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()

    def files(self, repo_id: str, revision: str = "main") -> dict[str, bytes]:
        return dict(self.repos[repo_id].branches[revision])

    # --- routing ---------------------------------------------------------------------------------------

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hub._handle(self, "GET")

            def do_POST(self) -> None:
                hub._handle(self, "POST")

            def do_PUT(self) -> None:
                hub._handle(self, "PUT")

            def log_message(self, *args: Any) -> None:  # keep pytest's output clean
                pass

        return Handler

    _ROUTES = (
        ("POST", "create", re.compile(r"/api/repos/create")),
        ("POST", "validate", re.compile(r"/api/validate-yaml")),
        ("POST", "preupload", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/preupload/(?P<rev>[^/]+)")),
        ("POST", "commit", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/commit/(?P<rev>[^/]+)")),
        ("POST", "branch", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/branch/(?P<rev>[^/]+)")),
        ("POST", "discussion", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/discussions")),
        ("GET", "discussion_details", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)/discussions/(?P<num>\d+)")),
        ("GET", "repo_info", re.compile(r"/api/models/(?P<repo>[^/]+/[^/]+)(/revision/(?P<rev>[^/]+))?")),
        ("GET", "agent_harnesses", re.compile(r"/api/agent-harnesses")),
    )
    _READS = ("validate", "agent_harnesses")  # routes that need no token

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = urlsplit(handler.path).path
        with self._lock:
            self.requests.append(
                Request(method, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
            )
            for route_method, name, pattern in self._ROUTES:
                match = pattern.fullmatch(path)
                if route_method == method and match:
                    authorised = self.token is None or handler.headers.get("Authorization") == f"Bearer {self.token}"
                    if name in self.fail:
                        status, payload, headers = self.fail[name], {"error": f"{name} failed"}, {}
                    elif not authorised and name not in self._READS:
                        status, payload = 401, {"error": "Invalid credentials in Authorization header"}
                        headers = {"X-Error-Message": "Invalid credentials in Authorization header"}
                    else:
                        params = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                        status, payload, headers = getattr(self, f"_{name}")(body, **params)
                    break
            else:
                self.unexpected.append(f"{method} {handler.path}")
                status, payload, headers = 404, {"error": "not implemented by FakeHub"}, {}
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            handler.send_header(key, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _missing(self, repo: str, rev: str | None = None) -> tuple[int, dict, dict] | None:
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if rev is not None and rev not in self.repos[repo].branches:
            return 404, {"error": "Revision not found"}, {"X-Error-Code": "RevisionNotFound"}
        return None

    # --- endpoints -------------------------------------------------------------------------------------

    def _create(self, body: bytes) -> tuple[int, dict, dict]:
        request = json.loads(body)
        repo_id = f"{request.get('organization') or USER}/{request['name']}"
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.url}/{repo_id}"}, {}
        self.repos[repo_id] = Repo(private=request.get("visibility") == "private" or None)
        return 200, {"url": f"{self.url}/{repo_id}"}, {}

    def _validate(self, body: bytes) -> tuple[int, dict, dict]:
        content = json.loads(body)["content"]
        self.validated.append(content)
        errors = check_card_metadata(content)
        if errors:
            return 400, {"errors": [{"message": e} for e in errors]}, {}
        return 200, {"errors": [], "warnings": []}, {}

    def _preupload(self, body: bytes, repo: str, rev: str) -> tuple[int, dict, dict]:
        if missing := self._missing(repo, rev):
            return missing
        files = json.loads(body)["files"]
        answer = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None} for f in files]
        return 200, {"files": answer, "commitOid": None}, {}

    def _commit(self, body: bytes, repo: str, rev: str) -> tuple[int, dict, dict]:
        if missing := self._missing(repo, rev):
            return missing
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = lines[0]["value"]
        files: dict[str, bytes] = {}
        for line in lines[1:]:
            if line["key"] != "file" or line["value"].get("encoding") != "base64":
                self.unexpected.append(f"commit line {line['key']}")
                continue
            files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
        oid = hashlib.sha1(body).hexdigest()
        self.repos[repo].branches[rev].update(files)
        self.commits.append(Commit(repo, rev, header["summary"], header.get("description", ""), files, oid))
        return 200, {"commitUrl": f"{self.url}/{repo}/commit/{oid}", "commitOid": oid, "success": True}, {}

    def _branch(self, body: bytes, repo: str, rev: str) -> tuple[int, dict, dict]:
        if missing := self._missing(repo):
            return missing
        if rev in self.repos[repo].branches:
            return 409, {"error": "Reference already exists"}, {}
        self.repos[repo].branches[rev] = dict(self.repos[repo].branches["main"])
        return 200, {}, {}

    def _discussion(self, body: bytes, repo: str) -> tuple[int, dict, dict]:
        if missing := self._missing(repo):
            return missing
        repository = self.repos[repo]
        repository.pulls += 1
        repository.branches[f"refs/pr/{repository.pulls}"] = dict(repository.branches["main"])
        return 200, {"num": repository.pulls, "url": f"{self.url}/{repo}/discussions/{repository.pulls}"}, {}

    def _discussion_details(self, body: bytes, repo: str, num: str) -> tuple[int, dict, dict]:
        if missing := self._missing(repo):
            return missing
        details = {
            "title": "pull request",
            "num": int(num),
            "author": {"name": USER},
            "createdAt": "2026-01-01T00:00:00.000Z",
            "status": "draft",
            "repo": {"name": repo, "type": "model"},
            "isPullRequest": True,
            "events": [],
            "changes": {"base": "refs/heads/main"},
            "filesWithConflicts": [],
        }
        return 200, details, {}

    def _repo_info(self, body: bytes, repo: str, rev: str | None = None) -> tuple[int, dict, dict]:
        if missing := self._missing(repo, rev):
            return missing
        return 200, {"id": repo, "sha": "0" * 40, "private": bool(self.repos[repo].private)}, {}

    def _agent_harnesses(self, body: bytes) -> tuple[int, dict, dict]:
        return 404, {"error": "not served here"}, {}
