"""A Hugging Face Hub-protocol server for the tests, on 127.0.0.1, written from what huggingface_hub's client
calls (``hf_api.py``, ``_commit_api.py``, ``lfs.py``, ``file_download.py``). It shares no code with timm_isomax.

Two HTTP servers on loopback ports:

- the *Hub* (``HubServer.url``, what ``HF_ENDPOINT`` points at): ``POST /api/repos/create``,
  ``GET /api/models/ORG/NAME[/revision/REV]`` (``?blobs=true`` adds sizes and LFS hashes),
  ``GET /api/models/ORG/NAME/tree/REV``, ``POST /api/validate-yaml`` (checks ``model-index`` against the
  Hub's model card schema), ``POST /api/models/ORG/NAME/preupload/REV``, the git-LFS batch and verify
  endpoints ``POST /ORG/NAME.git/info/lfs/objects/{batch,verify}``, ``POST /api/models/ORG/NAME/commit/REV``
  (NDJSON; ``parentCommit`` is honoured: 412 if the branch moved), and ``HEAD``/``GET
  /ORG/NAME/resolve/REV/PATH`` with the headers the client checks (``X-Repo-Commit``, ``ETag``; for LFS
  files a 302 to the storage host with ``X-Linked-Etag`` / ``X-Linked-Size``);
- the *storage* host (``HubServer.storage_url``, another origin, as S3 / the CDN are for the real Hub):
  LFS uploads (``PUT``, content checked against its SHA-256) and downloads (``GET``, with ``Range`` for
  resumed downloads).

Accounts: ``HubServer.tokens`` maps a token to ``(user, namespaces it may write to)``; a wrong token gets
401, a namespace the token may not write to 403, a private repo it may not see 404 (``RepoNotFound``). A
repo created there gets an initial commit holding ``.gitattributes``, as on the Hub. Faults for bad-input
tests: ``server.fail(method, path_regex, action, times)`` (an HTTP status with a JSON ``{"error": ...}``
body, like the Hub's; a dropped connection, before or after handling the request; or a hook such as
another user's commit). Every request is logged in ``server.requests``. The ``hub`` pytest fixture at the
end starts one and points huggingface_hub at it.

Xet storage is not implemented: clients must run with ``HF_HUB_DISABLE_XET=1`` (plain LFS, which the Hub
still accepts).
"""
import base64
import dataclasses
import hashlib
import io
import json
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Dict, List, Optional, Tuple, Union
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

# files the Hub's default .gitattributes sends to LFS (a subset), and its size limit for regular files
_LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".onnx", ".h5", ".npz", ".zip", ".tar", ".gz")
_REGULAR_LIMIT = 10 * 1024 * 1024
GITATTRIBUTES = "".join(f"*{suffix} filter=lfs diff=lfs merge=lfs -text\n" for suffix in _LFS_SUFFIXES).encode()
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def git_blob_sha1(content: bytes) -> str:
    """The git object id of a file (what the Hub reports as ``blobId`` / the regular file's ``ETag``)."""
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _lfs_pointer(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@dataclasses.dataclass(frozen=True)
class Entry:
    """One file of a commit: inline ``content`` (a regular git blob) or an LFS object ``lfs_oid`` of ``size``."""

    size: int
    content: Optional[bytes] = None
    lfs_oid: Optional[str] = None

    @property
    def git_oid(self) -> str:
        blob = self.content if self.lfs_oid is None else _lfs_pointer(self.lfs_oid, self.size)
        return git_blob_sha1(blob)


@dataclasses.dataclass
class Commit:
    oid: str
    message: str
    tree: Dict[str, Entry]


@dataclasses.dataclass
class Repo:
    private: bool
    commits: List[Commit] = dataclasses.field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]

    def at(self, revision: str) -> Optional[Commit]:
        if revision == "main":
            return self.head
        return next((c for c in self.commits if _COMMIT.match(revision) and c.oid == revision), None)


@dataclasses.dataclass
class Fault:
    method: str
    path: "re.Pattern[str]"
    action: Union[int, Tuple[int, dict], str, Callable[[], None]]  # see HubServer.fail
    times: int


class _HttpError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None, headers: Optional[dict] = None,
                 extra: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.code, self.headers, self.extra = status, message, code, headers or {}, extra or {}


class HubServer:
    """The Hub's state and its two HTTP servers. Use as a context manager, or ``start()`` / ``stop()``."""

    def __init__(self, tokens: Optional[Dict[str, Tuple[str, Tuple[str, ...]]]] = None):
        self.tokens = dict(tokens or {})
        self.repos: Dict[str, Repo] = {}
        self.lfs: Dict[str, bytes] = {}  # the storage bucket: sha256 -> content
        self.faults: List[Fault] = []
        # (host role: "hub" or "storage", method, path with query, headers with lower-case names)
        self.requests: List[Tuple[str, str, str, Dict[str, str]]] = []
        self._lock = threading.RLock()
        self._servers = [self._make_server("hub"), self._make_server("storage")]
        self._threads: List[threading.Thread] = []

    # --- set-up ---------------------------------------------------------------------------------------
    def _make_server(self, role: str) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        server.daemon_threads = True
        server.hub, server.role = self, role  # type: ignore[attr-defined]
        return server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def storage_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> "HubServer":
        for server in self._servers:
            thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        """Stop both servers (again: no-op); their ports refuse connections from then on."""
        if not self._threads:
            return
        self._threads, threads = [], self._threads
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in threads:
            thread.join(timeout=5)

    def __enter__(self) -> "HubServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def fail(self, method: str, path: str, action: Union[int, Tuple[int, dict], str, Callable[[], None]],
             times: int = 1) -> None:
        """Make the next ``times`` requests ``method path`` (``path``: a regex searched in the URL path) fail:
        ``action`` an HTTP status: answer it (``(status, body)``: with that JSON body); ``"drop"``: close the connection without handling the request
        (a GET from the storage host: before the last KiB of the body); ``"drop_after"``: handle it, then close the
        connection instead of answering (the answer is lost); a callable: run it first (e.g. another user's
        commit), then handle the request as usual."""
        with self._lock:
            self.faults.append(Fault(method, re.compile(path), action, times))

    def _take_fault(self, method: str, path: str) -> Optional[Fault]:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.method == method and fault.path.search(path):
                    fault.times -= 1
                    return fault
        return None

    # --- what tests inspect -------------------------------------------------------------------------
    def files(self, repo_id: str, revision: str = "main") -> Dict[str, bytes]:
        """The content of every file of ``repo_id`` at ``revision``."""
        commit = self.repos[repo_id].at(revision)
        return {path: entry.content if entry.lfs_oid is None else self.lfs[entry.lfs_oid]
                for path, entry in commit.tree.items()}

    def add_commit(self, repo_id: str, files: Dict[str, bytes], message: str = "seed") -> str:
        """Commit ``files`` to ``repo_id`` (created public if missing) directly, as another user's push would."""
        with self._lock:
            repo = self.repos.setdefault(repo_id, Repo(private=False))
            tree = dict(repo.head.tree) if repo.commits else {".gitattributes": Entry(len(GITATTRIBUTES), GITATTRIBUTES)}
            for path, content in files.items():
                tree[path] = self._entry(path, content)
            return self._commit(repo, message, tree)

    def _entry(self, path: str, content: bytes) -> Entry:
        if _is_lfs(path, len(content), content[:512]):
            oid = hashlib.sha256(content).hexdigest()
            self.lfs[oid] = content
            return Entry(len(content), lfs_oid=oid)
        return Entry(len(content), content=content)

    def _commit(self, repo: Repo, message: str, tree: Dict[str, Entry]) -> str:
        parent = repo.head.oid if repo.commits else ""
        listing = "".join(f"{p} {e.git_oid}\n" for p, e in sorted(tree.items()))
        oid = hashlib.sha1(f"{parent}\n{len(repo.commits)}\n{message}\n{listing}".encode()).hexdigest()
        repo.commits.append(Commit(oid, message, tree))
        return oid


def _is_lfs(path: str, size: int, sample: bytes) -> bool:
    return path.endswith(_LFS_SUFFIXES) or size > _REGULAR_LIMIT or b"\0" in sample


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as huggingface_hub's pooled client expects

    def log_message(self, *args) -> None:  # quiet: the tests read server.requests instead
        pass

    @property
    def hub(self) -> HubServer:
        return self.server.hub  # type: ignore[attr-defined]

    # --- plumbing -----------------------------------------------------------------------------------
    def _body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _send(self, status: int, body: bytes = b"", headers: Optional[dict] = None,
              content_type: str = "application/json") -> None:
        self.send_response(status)
        for key, value in {"Content-Type": content_type, "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, data, headers: Optional[dict] = None) -> None:
        self._send(status, json.dumps(data).encode(), headers)

    def _drop(self) -> None:
        # the server goes away mid-request: no status line, the socket closed
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _user(self) -> Optional[Tuple[str, Tuple[str, ...]]]:
        auth = self.headers.get("Authorization", "")
        if not auth:
            return None
        token = auth.split(" ", 1)[-1]
        if token not in self.hub.tokens:
            raise _HttpError(401, "Invalid credentials in Authorization header")
        return self.hub.tokens[token]

    def _may_write(self, namespace: str) -> None:
        user = self._user()
        if user is None:
            raise _HttpError(401, "You must be authenticated to write (pass a token)")
        if namespace not in user[1]:
            raise _HttpError(403, f"You don't have the rights to write to the namespace {namespace!r} (you are "
                                  f"{user[0]!r})")

    def _repo(self, repo_id: str) -> Repo:
        repo = self.hub.repos.get(repo_id)
        user = self._user()
        if repo is None or (repo.private and (user is None or repo_id.split("/")[0] not in user[1])):
            raise _HttpError(404, "Repository not found", "RepoNotFound")
        return repo

    def _commit_at(self, repo: Repo, revision: str) -> Commit:
        commit = repo.at(unquote(revision))
        if commit is None:
            raise _HttpError(404, f"Invalid rev id: {unquote(revision)}", "RevisionNotFound")
        return commit

    def _dispatch(self) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        role = self.server.role  # type: ignore[attr-defined]
        self.hub.requests.append((role, self.command, self.path, {k.lower(): v for k, v in self.headers.items()}))
        fault = self.hub._take_fault(self.command, path)
        body = self._body() if self.command in ("POST", "PUT") else b""
        if fault is not None and callable(fault.action):
            fault.action()
            fault = None
        if fault is not None and fault.action == "drop_after":
            self.wfile = io.BytesIO()  # the answer goes nowhere
            self._handle(role, path, body, query, dropping=False)
            return self._drop()
        if isinstance(fault.action if fault else None, tuple):  # (status, the JSON body the Hub would send)
            return self._json(fault.action[0], fault.action[1])
        if fault is not None and fault.action != "drop":
            return self._json(int(fault.action), {"error": f"injected failure {fault.action}"})
        if fault is not None and not (self.command == "GET" and role == "storage"):
            return self._drop()
        self._handle(role, path, body, query, dropping=fault is not None)

    def _handle(self, role: str, path: str, body: bytes, query, dropping: bool) -> None:
        try:
            if role == "storage":
                return self._storage(path, body, dropping=dropping)
            for method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, path)
                if match and method == self.command:
                    with self.hub._lock:
                        return handler(self, *match.groups(), body=body, query=query)
            raise _HttpError(404, f"no route {self.command} {path}")
        except _HttpError as error:
            self._json(error.status, {"error": error.message, **error.extra},
                       {**({"X-Error-Code": error.code} if error.code else {}), "X-Error-Message": error.message,
                        **error.headers})

    do_GET = do_HEAD = do_POST = do_PUT = _dispatch

    # --- storage host ---------------------------------------------------------------------------------
    def _storage(self, path: str, body: bytes, dropping: bool) -> None:
        oid = path.rsplit("/", 1)[-1]
        if self.command == "PUT" and path.startswith("/upload/"):
            if hashlib.sha256(body).hexdigest() != oid:
                raise _HttpError(400, "uploaded content does not match its sha256")
            self.hub.lfs[oid] = body
            return self._send(200, b"", {"ETag": f'"{oid}"'})
        if self.command in ("GET", "HEAD") and path.startswith("/lfs/") and oid in self.hub.lfs:
            content, status, headers = self.hub.lfs[oid], 200, {"Accept-Ranges": "bytes"}
            ranged = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                headers["Content-Range"] = f"bytes {start}-{len(content) - 1}/{len(content)}"
                content, status = content[start:], 206
            if dropping:  # all but the last KiB of the body, then the connection goes
                self.send_response(status)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content[: max(len(content) - 1024, 0)])
                self.wfile.flush()
                return self._drop()
            return self._send(status, content, headers, content_type="application/octet-stream")
        raise _HttpError(404, "NoSuchKey")

    # --- Hub API --------------------------------------------------------------------------------------
    def post_create_repo(self, body: bytes, query) -> None:
        payload = json.loads(body)
        namespace = payload.get("organization") or (self._user() or ("",))[0]
        if not namespace:
            raise _HttpError(401, "You must be authenticated to create a repo")
        repo_id = f"{namespace}/{payload['name']}"
        self._may_write(namespace)
        if repo_id in self.hub.repos:
            # the Hub names the existing repo's URL, which huggingface_hub's create_repo(exist_ok=True) returns
            raise _HttpError(409, "You already created this model repo", extra={"url": f"{self.hub.url}/{repo_id}"})
        repo = Repo(private=payload.get("visibility", "public") == "private" or bool(payload.get("private")))
        self.hub.repos[repo_id] = repo
        self.hub._commit(repo, "initial commit", {".gitattributes": Entry(len(GITATTRIBUTES), GITATTRIBUTES)})
        self._json(200, {"url": f"{self.hub.url}/{repo_id}", "name": repo_id})

    def get_model_info(self, repo_id: str, revision: Optional[str], body: bytes, query) -> None:
        repo = self._repo(repo_id)
        commit = self._commit_at(repo, revision or "main")
        blobs = query.get("blobs", ["false"])[0].lower() == "true"
        siblings = [{"rfilename": path, **(self._blob_info(entry) if blobs else {})}
                    for path, entry in sorted(commit.tree.items())]
        self._json(200, {"id": repo_id, "modelId": repo_id, "sha": commit.oid, "private": repo.private,
                         "siblings": siblings, "tags": [], "lastModified": "2026-12-02T00:00:00.000Z"})

    @staticmethod
    def _blob_info(entry: Entry) -> dict:
        info = {"size": entry.size, "blobId": entry.git_oid}
        if entry.lfs_oid is not None:
            info["lfs"] = {"size": entry.size, "sha256": entry.lfs_oid,
                           "pointerSize": len(_lfs_pointer(entry.lfs_oid, entry.size))}
        return info

    def get_tree(self, repo_id: str, revision: str, body: bytes, query) -> None:
        commit = self._commit_at(self._repo(repo_id), revision)
        self._json(200, [{"type": "file", "path": path, "oid": entry.git_oid, "size": entry.size,
                          **({"lfs": {"oid": entry.lfs_oid, "size": entry.size,
                                      "pointerSize": len(_lfs_pointer(entry.lfs_oid, entry.size))}}
                             if entry.lfs_oid else {})}
                         for path, entry in sorted(commit.tree.items())])

    def post_validate_yaml(self, body: bytes, query) -> None:
        content = json.loads(body)["content"]
        errors = card_metadata_errors(content)
        if errors:
            return self._json(400, {"errors": [{"message": e} for e in errors]})
        self._json(200, {"errors": [], "warnings": []})

    def post_preupload(self, repo_id: str, revision: str, body: bytes, query) -> None:
        repo = self._repo(repo_id)
        self._may_write(repo_id.split("/")[0])
        tree = self._commit_at(repo, revision).tree
        files = []
        for file in json.loads(body)["files"]:
            sample = base64.b64decode(file["sample"])
            existing = tree.get(file["path"])
            # the oid huggingface_hub compares with its own: SHA-256 for LFS files, git SHA-1 for the others
            oid = None if existing is None else existing.lfs_oid or existing.git_oid
            files.append({"path": file["path"], "uploadMode": "lfs" if _is_lfs(file["path"], file["size"], sample)
                          else "regular", "shouldIgnore": False, "oid": oid})
        self._json(200, {"files": files, "commitOid": repo.head.oid})

    def post_lfs_batch(self, repo_id: str, body: bytes, query) -> None:
        self._repo(repo_id)
        self._may_write(repo_id.split("/")[0])
        payload = json.loads(body)
        if payload.get("operation") != "upload":
            raise _HttpError(422, "only uploads are supported here")
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.hub.lfs:  # else: already stored, nothing to send
                entry["actions"] = {
                    "upload": {"href": f"{self.hub.storage_url}/upload/{obj['oid']}"},
                    "verify": {"href": f"{self.hub.url}/{repo_id}.git/info/lfs/objects/verify"}}
            objects.append(entry)
        self._json(200, {"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   {"Content-Type": "application/vnd.git-lfs+json"})

    def post_lfs_verify(self, repo_id: str, body: bytes, query) -> None:
        payload = json.loads(body)
        stored = self.hub.lfs.get(payload["oid"])
        if stored is None or len(stored) != payload["size"]:
            raise _HttpError(404, f"LFS object {payload['oid']} not found")
        self._json(200, {"success": True})

    def post_commit(self, repo_id: str, revision: str, body: bytes, query) -> None:
        repo = self._repo(repo_id)
        self._may_write(repo_id.split("/")[0])
        if unquote(revision) != "main":
            raise _HttpError(400, "this server commits to main only")
        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
        header = next((line["value"] for line in lines if line["key"] == "header"), None)
        if header is None or not header.get("summary"):
            raise _HttpError(400, "a commit needs a header with a summary")
        if header.get("parentCommit") not in (None, repo.head.oid):
            raise _HttpError(412, "A commit has happened since. Please refresh and try again.")
        tree = dict(repo.head.tree)
        for line in lines:
            value = line["value"]
            if line["key"] == "file":
                content = base64.b64decode(value["content"])
                tree[value["path"]] = Entry(len(content), content=content)
            elif line["key"] == "lfsFile":
                stored = self.hub.lfs.get(value["oid"])
                if stored is None:
                    raise _HttpError(422, f"LFS object {value['oid']} of {value['path']} was never uploaded")
                tree[value["path"]] = Entry(len(stored), lfs_oid=value["oid"])
            elif line["key"] == "deletedFile":
                tree.pop(value["path"], None)
        oid = self.hub._commit(repo, header["summary"], tree)
        self._json(200, {"success": True, "commitOid": oid, "commitUrl": f"{self.hub.url}/{repo_id}/commit/{oid}",
                         "hookOutput": ""})

    def get_resolve(self, repo_id: str, revision: str, filename: str, body: bytes, query) -> None:
        repo = self._repo(repo_id)
        commit = self._commit_at(repo, revision)
        entry = commit.tree.get(unquote(filename))
        headers = {"X-Repo-Commit": commit.oid}
        if entry is None:
            raise _HttpError(404, "Entry not found", "EntryNotFound", headers)
        if entry.lfs_oid is None:
            return self._send(200, entry.content, {**headers, "ETag": f'"{entry.git_oid}"'},
                              content_type="application/octet-stream")
        # LFS: the file lives on the storage host; the redirect itself carries the metadata
        self._send(302, b"", {**headers, "ETag": f'"{entry.git_oid}"', "X-Linked-Etag": f'"{entry.lfs_oid}"',
                              "X-Linked-Size": str(entry.size), "Location": f"{self.hub.storage_url}/lfs/{entry.lfs_oid}"})



_REPO = r"([\w.-]+/[\w.-]+)"
_ROUTES = [
    ("POST", r"/api/repos/create", _Handler.post_create_repo),
    ("GET", rf"/api/models/{_REPO}(?:/revision/([^/]+))?", _Handler.get_model_info),
    ("GET", rf"/api/models/{_REPO}/tree/([^/]+)", _Handler.get_tree),
    ("POST", r"/api/validate-yaml", _Handler.post_validate_yaml),
    ("POST", rf"/api/models/{_REPO}/preupload/([^/]+)", _Handler.post_preupload),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/batch", _Handler.post_lfs_batch),
    ("POST", rf"/{_REPO}\.git/info/lfs/objects/verify", _Handler.post_lfs_verify),
    ("POST", rf"/api/models/{_REPO}/commit/([^/]+)", _Handler.post_commit),
    ("GET", rf"/{_REPO}/resolve/([^/]+)/(.+)", _Handler.get_resolve),
    ("HEAD", rf"/{_REPO}/resolve/([^/]+)/(.+)", _Handler.get_resolve),
]


# --- the Hub's model card metadata checks (hub-docs modelcard.md, "model-index") ----------------------
def card_metadata_errors(readme: str) -> List[str]:
    """What the Hub's validate-yaml would reject in a README's front matter."""
    if not readme.startswith("---\n"):
        return []  # no metadata: the Hub only warns
    try:
        front = yaml.safe_load(readme.split("---\n", 2)[1])
    except (IndexError, yaml.YAMLError) as error:
        return [f"YAML front matter does not parse: {error}"]
    if not isinstance(front, dict):
        return ["YAML front matter must be a mapping"]
    index = front.get("model-index")
    if index is None:
        return []
    errors: List[str] = []

    def need(value, kind, where):
        if not isinstance(value, kind):
            errors.append(f'"{where}" must be a {kind.__name__ if isinstance(kind, type) else "number or string"}')
            return False
        return True

    if not need(index, list, "model-index"):
        return errors
    for i, model in enumerate(index):
        where = f"model-index[{i}]"
        if not need(model, dict, where) or not need(model.get("name"), str, f"{where}.name"):
            continue
        if not need(model.get("results"), list, f"{where}.results"):
            continue
        for j, result in enumerate(model["results"]):
            at = f"{where}.results[{j}]"
            if not need(result, dict, at):
                continue
            task, dataset, metrics = result.get("task"), result.get("dataset"), result.get("metrics")
            if need(task, dict, f"{at}.task"):
                need(task.get("type"), str, f"{at}.task.type")
            if need(dataset, dict, f"{at}.dataset"):
                need(dataset.get("type"), str, f"{at}.dataset.type")
                need(dataset.get("name"), str, f"{at}.dataset.name")
            if need(metrics, list, f"{at}.metrics"):
                for k, metric in enumerate(metrics):
                    if need(metric, dict, f"{at}.metrics[{k}]"):
                        need(metric.get("type"), str, f"{at}.metrics[{k}].type")
                        value = metric.get("value")
                        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                            errors.append(f'"{at}.metrics[{k}].value" must be a number or string')
    return errors




# --- the pytest fixture -------------------------------------------------------------------------------
WRITE_TOKEN = "hf_aliceWRITEtoken0123456789"  # may write to the namespaces "alice" and "test-org"


@pytest.fixture(name="hub")
def hub_fixture(tmp_path, monkeypatch):
    """A fresh :class:`HubServer`, with huggingface_hub pointed at it: in this process (the settings it read
    from the environment at import are set as it would have derived them) and in subprocesses
    (``hub.env``). The HF cache is empty and there is no saved login; ``WRITE_TOKEN`` may write."""
    from huggingface_hub import constants

    server = HubServer(tokens={WRITE_TOKEN: ("alice", ("alice", "test-org"))}).start()
    home = tmp_path / "hf_home"
    server.cache = home / "hub"
    server.env = {"HF_ENDPOINT": server.url, "HF_HUB_DISABLE_XET": "1", "HF_HOME": str(home),
                  "HF_HUB_CACHE": str(server.cache), "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for key, value in server.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    for key, value in (("ENDPOINT", server.url), ("HF_HUB_DISABLE_XET", True), ("HF_HUB_CACHE", str(server.cache)),
                       ("HF_HUB_OFFLINE", False), ("HF_TOKEN_PATH", str(home / "token")),
                       ("HUGGINGFACE_CO_URL_TEMPLATE", server.url + "/{repo_id}/resolve/{revision}/{filename}")):
        monkeypatch.setattr(constants, key, value)
    yield server
    server.stop()
