"""An in-process fake Hugging Face Hub for tests (docs/pitfalls.md, "The Hub, offline"), shared by every test that
pushes.

huggingface_hub 2.x sends every request through one `httpx2.Client` made by a factory that tests may replace
(`huggingface_hub.set_client_factory`). `FakeHub.install()` replaces it with a client on an `httpx2.MockTransport`
that answers, from a folder on disk, what `push_to_hub` and the loaders call:

- repo creation (`/api/repos/create`), `whoami-v2`, `validate-yaml` (a README's metadata), repo info
  (`/api/{type}s/{repo}[/revision/{rev}]`), refs and commits listings;
- uploads: `preupload` (binary and large files go through LFS), the LFS batch API (basic transfer) and the PUT of
  each LFS object, and `commit` (NDJSON: header, file, lfsFile, deletedFile, deletedFolder);
- downloads: `tree` (recursive or not), `paths-info`, and `HEAD` / `GET` on `resolve/{rev}/{path}` with the
  `X-Repo-Commit`, `X-Linked-Etag`, `X-Linked-Size` headers.

Only the latest revision of a repository is kept (any revision name resolves to it). State lives in the folder, so
a push in one process and a load in another see the same Hub.

`HF_ENDPOINT`, `HF_HUB_OFFLINE` and `HF_HUB_DISABLE_XET` are read when huggingface_hub, datasets and transformers
are imported, so the code under test runs in a subprocess started with `fake_hub_env(root)`; inside it,
`install_from_env()` (or running this file as a launcher) installs the fake client before anything is pushed:

    subprocess.run([sys.executable, "tests/fake_hub.py", "--root", str(root), "-c", "CODE"], env=fake_hub_env(root))
    subprocess.run([sys.executable, "tests/fake_hub.py", "--root", str(root), "-m", "module", "arg", ...], env=...)

Inside the subprocess, `model.push_to_hub("user/name")`, `Dataset.push_to_hub`, `HfApi().upload_folder`,
`from_pretrained("user/name")` and `load_dataset("user/name")` then all go to the fake Hub.
"""

import argparse
import base64
import hashlib
import json
import os
import runpy
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import parse_qs, unquote

import httpx2


ENDPOINT = "http://fake-hub.local"
USER = "fake-user"
ROOT_ENV = "LAVIT_FAKE_HUB_ROOT"
# Files sent through LFS, as the real Hub's default .gitattributes does (plus anything over 1 MB).
LFS_SUFFIXES = (".parquet", ".safetensors", ".bin", ".arrow", ".png", ".jpg", ".jpeg", ".pt", ".npy", ".zip")
LFS_MIN_SIZE = 1_000_000
PREFIXES = {"models": "", "datasets": "datasets/", "spaces": "spaces/"}


def git_blob_sha(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def _json(data, status: int = 200, headers: dict | None = None) -> httpx2.Response:
    return httpx2.Response(status, json=data, headers=headers or {})


def _error(status: int, code: str, message: str) -> httpx2.Response:
    return httpx2.Response(status, json={"error": message}, headers={"X-Error-Code": code, "X-Error-Message": message})


class FakeRepo:
    """One repository: `files/` holds the tree, `meta.json` the head commit and which files are LFS."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.files = folder / "files"

    @property
    def exists(self) -> bool:
        return (self.folder / "meta.json").is_file()

    def meta(self) -> dict:
        return json.loads((self.folder / "meta.json").read_text())

    def save_meta(self, meta: dict) -> None:
        (self.folder / "meta.json").write_text(json.dumps(meta))

    def create(self, private: bool) -> None:
        if not self.exists:
            self.files.mkdir(parents=True, exist_ok=True)
            self.save_meta({"sha": "0" * 40, "private": private, "lfs": {}, "commits": []})

    def paths(self) -> list[str]:
        return sorted(str(p.relative_to(self.files)) for p in self.files.rglob("*") if p.is_file())

    def entry(self, path: str) -> dict | None:
        target = self.files / path
        if target.is_dir():
            return {"type": "directory", "path": path, "oid": hashlib.sha1(path.encode()).hexdigest()}
        if not target.is_file():
            return None
        content = target.read_bytes()
        entry = {"type": "file", "path": path, "size": len(content), "oid": git_blob_sha(content)}
        lfs = self.meta()["lfs"].get(path)
        if lfs is not None:
            entry["lfs"] = {"oid": lfs, "size": len(content), "pointerSize": 134}
        return entry


class FakeHub:
    """The fake Hub's request handler over a storage folder.

    Args:
        root (`str` or `Path`): where repositories and LFS objects are stored.
        endpoint (`str`, *optional*, defaults to `"http://fake-hub.local"`): must equal `HF_ENDPOINT`.
    """

    def __init__(self, root: str | Path, endpoint: str = ENDPOINT):
        self.root = Path(root)
        self.endpoint = endpoint.rstrip("/")
        self.requests: list[str] = []

    # Installation ----------------------------------------------------------------------------------------------

    def client(self) -> httpx2.Client:
        return httpx2.Client(transport=httpx2.MockTransport(self.handle), follow_redirects=True, timeout=None)

    def async_client(self) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(transport=httpx2.MockTransport(self.handle), follow_redirects=True, timeout=None)

    def install(self) -> "FakeHub":
        """Route every huggingface_hub request of this process to the fake Hub."""
        import huggingface_hub

        huggingface_hub.set_client_factory(self.client)
        huggingface_hub.set_async_client_factory(self.async_client)
        return self

    # Routing ---------------------------------------------------------------------------------------------------

    def repo(self, repo_type: str, repo_id: str) -> FakeRepo:
        return FakeRepo(self.root / "repos" / repo_type / repo_id)

    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = unquote(request.url.path)
        self.requests.append(f"{request.method} {path}")
        if path.startswith("/api/"):
            return self._api(request, path[len("/api/") :].split("/"))
        if path.startswith("/__lfs__/"):
            return self._lfs_put(request, path.rsplit("/", 1)[1])
        return self._git(request, path.strip("/").split("/"))

    def _api(self, request: httpx2.Request, parts: list[str]) -> httpx2.Response:
        if parts[:2] == ["repos", "create"]:
            return self._create(json.loads(request.content))
        if parts[0] == "validate-yaml":
            return _json({"errors": [], "warnings": []})
        if parts[0] == "whoami-v2":
            return _json({"name": USER, "type": "user", "orgs": [], "auth": {"accessToken": {"role": "write"}}})
        if parts[0] in PREFIXES and len(parts) >= 3:
            repo_type, repo_id, rest = parts[0][:-1], "/".join(parts[1:3]), parts[3:]
            repo = self.repo(repo_type, repo_id)
            if not repo.exists:
                return _error(404, "RepoNotFound", f"Repository {repo_id} not found")
            return self._repo_api(request, repo_type, repo_id, repo, rest)
        return _error(404, "NotFound", f"fake hub: no route for {request.method} /api/{'/'.join(parts)}")

    def _repo_api(self, request, repo_type: str, repo_id: str, repo: FakeRepo, rest: list[str]) -> httpx2.Response:
        action = rest[0] if rest else "revision"
        recursive = request.url.params.get("recursive") in ("1", "true", "True")
        head = repo.meta()["sha"]
        branch = {"name": "main", "ref": "refs/heads/main", "targetCommit": head}
        refs = {"branches": [branch], "tags": [], "converts": []}
        commits = [{"id": c, "title": "commit", "message": "", "authors": [], "date": _now()}
                   for c in repo.meta()["commits"]]
        routes = {
            "revision": lambda: self._info(repo_type, repo_id, repo),
            "preupload": lambda: self._preupload(repo, json.loads(request.content)),
            "commit": lambda: self._commit(repo_type, repo_id, repo, request.content),
            "tree": lambda: self._tree(repo, "/".join(rest[2:]), recursive),
            "paths-info": lambda: self._paths_info(repo, request),
            "refs": lambda: _json(refs),
            "commits": lambda: _json(commits[::-1]),
        }
        if action not in routes:
            return _error(404, "NotFound", f"fake hub: no route for {request.method} {'/'.join(rest)}")
        return routes[action]()

    # Repositories ----------------------------------------------------------------------------------------------

    def _create(self, body: dict) -> httpx2.Response:
        repo_type = body.get("type") or "model"
        repo_id = f"{body.get('organization') or USER}/{body['name']}"
        self.repo(repo_type, repo_id).create(bool(body.get("private")))
        return _json({"url": f"{self.endpoint}/{PREFIXES[repo_type + 's']}{repo_id}", "name": repo_id})

    def _info(self, repo_type: str, repo_id: str, repo: FakeRepo) -> httpx2.Response:
        meta = repo.meta()
        siblings = [{"rfilename": p, "size": (repo.files / p).stat().st_size} for p in repo.paths()]
        return _json({
            "id": repo_id, "_id": repo_id, "author": repo_id.split("/")[0], "sha": meta["sha"],
            "private": meta["private"], "disabled": False, "gated": False, "downloads": 0, "likes": 0, "tags": [],
            "siblings": siblings,
            "lastModified": _now(), "createdAt": _now(), "usedStorage": 0,
        })

    def _preupload(self, repo: FakeRepo, body: dict) -> httpx2.Response:
        files = []
        for item in body["files"]:
            lfs = item["path"].endswith(LFS_SUFFIXES) or item["size"] >= LFS_MIN_SIZE
            files.append({"path": item["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False})
        return _json({"files": files, "commitOid": repo.meta()["sha"]})

    def _commit(self, repo_type: str, repo_id: str, repo: FakeRepo, content: bytes) -> httpx2.Response:
        meta = repo.meta()
        summary = ""
        for line in content.decode().splitlines():
            if not line.strip():
                continue
            item = json.loads(line)
            key, value = item["key"], item["value"]
            if key == "header":
                summary = value.get("summary", "")
            elif key == "file":
                self._write(repo, meta, value["path"], base64.b64decode(value["content"]), None)
            elif key == "lfsFile":
                blob = self.root / "lfs" / value["oid"]
                if not blob.is_file():
                    message = f"LFS object {value['oid']} of {value['path']} was never uploaded"
                    return _error(400, "BadRequest", message)
                self._write(repo, meta, value["path"], blob.read_bytes(), value["oid"])
            elif key in ("deletedFile", "deletedFolder"):
                self._delete(repo, meta, value["path"])
        sha = hashlib.sha1(f"{meta['sha']}{summary}{len(meta['commits'])}{repo.paths()}".encode()).hexdigest()
        meta["sha"] = sha
        meta["commits"].append(sha)
        repo.save_meta(meta)
        url = f"{self.endpoint}/{PREFIXES[repo_type + 's']}{repo_id}"
        return _json({"commitUrl": f"{url}/commit/{sha}", "commitOid": sha, "success": True, "pullRequestUrl": None})

    @staticmethod
    def _write(repo: FakeRepo, meta: dict, path: str, data: bytes, lfs_oid: str | None) -> None:
        target = repo.files / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        meta["lfs"].pop(path, None)
        if lfs_oid is not None:
            meta["lfs"][path] = lfs_oid

    @staticmethod
    def _delete(repo: FakeRepo, meta: dict, path: str) -> None:
        target = repo.files / path
        if target.is_dir():
            shutil.rmtree(target)
        elif target.is_file():
            target.unlink()
        meta["lfs"] = {p: o for p, o in meta["lfs"].items() if p != path and not p.startswith(path.rstrip("/") + "/")}

    # LFS -------------------------------------------------------------------------------------------------------

    def _lfs_batch(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content)
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if not (self.root / "lfs" / obj["oid"]).is_file():
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/__lfs__/{obj['oid']}", "header": {}}}
            objects.append(entry)
        headers = {"Content-Type": "application/vnd.git-lfs+json"}
        return _json({"transfer": "basic", "objects": objects}, headers=headers)

    def _lfs_put(self, request: httpx2.Request, oid: str) -> httpx2.Response:
        data = request.read()
        if hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "BadRequest", f"LFS object does not match its oid {oid}")
        (self.root / "lfs").mkdir(parents=True, exist_ok=True)
        (self.root / "lfs" / oid).write_bytes(data)
        return httpx2.Response(200)

    # Downloads -------------------------------------------------------------------------------------------------

    def _tree(self, repo: FakeRepo, folder: str, recursive: bool) -> httpx2.Response:
        base = repo.files / folder
        if not base.is_dir():
            return _error(404, "EntryNotFound", f"{folder} does not exist")
        children = base.rglob("*") if recursive else base.iterdir()
        return _json([repo.entry(str(p.relative_to(repo.files))) for p in sorted(children)])

    def _paths_info(self, repo: FakeRepo, request: httpx2.Request) -> httpx2.Response:
        if request.headers.get("content-type", "").startswith("application/json"):
            paths = json.loads(request.content)["paths"]
        else:
            paths = parse_qs(request.content.decode()).get("paths", [])
        entries = [repo.entry(p.strip("/")) for p in paths]
        return _json([e for e in entries if e is not None])

    def _git(self, request: httpx2.Request, parts: list[str]) -> httpx2.Response:
        repo_type = "model"
        if parts[0] in ("datasets", "spaces"):
            repo_type, parts = parts[0][:-1], parts[1:]
        if len(parts) == 6 and parts[1].endswith(".git") and parts[2:] == ["info", "lfs", "objects", "batch"]:
            return self._lfs_batch(request)
        if len(parts) < 5 or parts[2] != "resolve":
            return _error(404, "NotFound", f"fake hub: no route for {request.method} {request.url.path}")
        repo = self.repo(repo_type, "/".join(parts[:2]))
        if not repo.exists:
            return _error(404, "RepoNotFound", f"Repository {'/'.join(parts[:2])} not found")
        return self._resolve(request, repo, "/".join(parts[4:]))

    def _resolve(self, request: httpx2.Request, repo: FakeRepo, path: str) -> httpx2.Response:
        entry = repo.entry(path)
        if entry is None or entry["type"] != "file":
            return _error(404, "EntryNotFound", f"{path} does not exist")
        etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
        headers = {
            "X-Repo-Commit": repo.meta()["sha"],
            "X-Linked-Etag": f'"{etag}"',
            "ETag": f'"{etag}"',
            "X-Linked-Size": str(entry["size"]),
            "Content-Length": str(entry["size"]),
            "Accept-Ranges": "bytes",
        }
        if request.method == "HEAD":
            return httpx2.Response(200, headers=headers)
        data = (repo.files / path).read_bytes()
        status, data = _byte_range(request.headers.get("range"), data)
        headers["Content-Length"] = str(len(data))
        return httpx2.Response(status, headers=headers, content=data)


def _byte_range(header: str | None, data: bytes) -> tuple[int, bytes]:
    """Honour `Range: bytes=a-b` (resumed downloads and fsspec reads of parquet footers)."""
    if not header or not header.startswith("bytes="):
        return 200, data
    start, _, end = header[len("bytes=") :].partition("-")
    if not start:
        return 206, data[-int(end) :]
    return 206, data[int(start) : (int(end) + 1 if end else None)]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def fake_hub_env(root: str | Path, base: dict | None = None) -> dict[str, str]:
    """Environment for a subprocess that talks to the fake Hub stored in `root` (own HF cache, online, no Xet)."""
    env = dict(os.environ if base is None else base)
    env.update(
        HF_ENDPOINT=ENDPOINT,
        HF_HUB_OFFLINE="0",
        HF_DATASETS_OFFLINE="0",
        TRANSFORMERS_OFFLINE="0",
        HF_HUB_DISABLE_XET="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_TOKEN="hf_fake_token",
        HF_HOME=str(Path(root) / "hf_home"),
    )
    env[ROOT_ENV] = str(root)
    return env


def install_from_env() -> FakeHub:
    """Install the fake Hub named by the environment (`fake_hub_env`); refuses to run against another endpoint."""
    from huggingface_hub import constants

    if constants.ENDPOINT != ENDPOINT or constants.HF_HUB_OFFLINE:
        raise RuntimeError(f"Start this process with fake_hub_env(): HF_ENDPOINT={constants.ENDPOINT}, "
                           f"HF_HUB_OFFLINE={constants.HF_HUB_OFFLINE}.")
    return FakeHub(os.environ[ROOT_ENV]).install()


def main(argv: list[str] | None = None) -> None:
    """`python tests/fake_hub.py --root DIR (-c CODE | -m MODULE [ARGS...])`: run code with the fake Hub installed."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--root", required=True)
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("-c", dest="code")
    group.add_argument("-m", dest="module")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    os.environ[ROOT_ENV] = args.root
    install_from_env()
    if args.code is not None:
        sys.argv = ["-c", *args.args]
        exec(compile(args.code, "<fake_hub -c>", "exec"), {"__name__": "__main__"})
    else:
        sys.argv = [args.module, *args.args]
        runpy.run_module(args.module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
