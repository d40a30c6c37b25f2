"""Model hub STAND-IN for the vlmfleet lab (the public hubs are unreachable there). Never a production endpoint.

Serves the repositories `vlmfleet.lab.hub` builds over the protocols the real clients speak, so the weights stage
runs huggingface_hub, modelscope and git-lfs end to end:

- Hugging Face Hub HTTP API (what ``HF_ENDPOINT`` points at): ``/api/models/{repo}[/revision/{rev}]``,
  ``/api/models/{repo}/tree/{rev}``, ``HEAD|GET /{repo}/resolve/{rev}/{path}`` with ``X-Repo-Commit``,
  ``ETag``, ``X-Linked-Etag``/``X-Linked-Size`` (LFS) and byte ranges (resumed downloads);
- ModelScope API: ``/api/v1/models/{repo}``, ``.../revisions``, ``.../repo/files`` (with ``Sha256``),
  ``.../repo?FilePath=``;
- a git remote (git's dumb HTTP protocol) with the git-lfs batch API and object downloads.

Lab controls (not part of any hub API): ``POST /_standin/throttle {"bytes_per_s": N}`` slows every file body
(to interrupt a transfer mid-file in tests), ``POST /_standin/corrupt {"file": NAME, "times": N}`` flips bytes
in the next N bodies served for files named NAME (same length: a client sees only the hash differ),
``GET /_standin/log`` returns the access log, and
``POST /_standin/gpu-memory`` answers the serving stand-in of a lab host (known by its address) with what vLLM's
memory profiler would find on that host's simulated GPUs (vlmfleet.lab.standins.gpu_memory).

    python -m vlmfleet.lab.standins.hub_standin --root /var/lib/vlmfleet-lab/cache/hub --bind 10.77.0.1 --port 8081
"""

from __future__ import annotations

import argparse
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

CHUNK = 64 * 1024


class Hub:
    def __init__(self, root: Path, hosts_dir: Path | None = None, net: str | None = None):
        self.root = root
        self.hosts_dir, self.net = hosts_dir, net
        self.index = json.loads((root / "index.json").read_text())
        self.bytes_per_s = 0
        self.corrupt: dict[str, int] = {}  # file name -> bodies still to corrupt
        self.log: list[dict] = []
        self.lock = threading.Lock()

    def resolve(self, repo: str, rev: str) -> str | None:
        info = self.index.get(repo)
        if info is None:
            return None
        return info["commit"] if rev in ("main", "master", "HEAD", info["commit"]) else None

    def file_path(self, repo: str, name: str) -> Path:
        return self.root / "files" / repo / name


class Handler(BaseHTTPRequestHandler):
    hub: Hub = None
    protocol_version = "HTTP/1.1"
    server_version = "vlmfleet-hub-standin"

    def log_message(self, fmt, *args):
        pass

    # ---- plumbing ------------------------------------------------------------------------------------------
    def _record(self, status: int, sent: int) -> None:
        with self.hub.lock:
            self.hub.log.append({"t": round(time.time(), 3), "method": self.command, "path": self.path,
                                 "range": self.headers.get("Range"), "status": status, "bytes": sent,
                                 "agent": (self.headers.get("User-Agent") or "")[:60]})

    def _json(self, code: int, body, headers: dict | None = None) -> None:
        raw = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
        self._record(code, len(raw))

    def _not_found(self, code: str, message: str) -> None:
        self._json(404, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message})

    def _file(self, path: Path, headers: dict) -> None:
        size = path.stat().st_size
        start, end = 0, size - 1
        rng = self.headers.get("Range")
        status = 200
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if m and (m.group(1) or m.group(2)):
                if m.group(1):
                    start = int(m.group(1))
                    end = int(m.group(2)) if m.group(2) else size - 1
                else:
                    start = max(0, size - int(m.group(2)))
                if start >= size:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{size}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    self._record(416, 0)
                    return
                status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(length))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        for k, v in headers.items():
            self.send_header(k, v)
        self.end_headers()
        sent = 0
        spoil = False
        if self.command != "HEAD" and self.hub.corrupt.get(path.name):
            with self.hub.lock:
                spoil = self.hub.corrupt.get(path.name, 0) > 0
                if spoil:
                    self.hub.corrupt[path.name] -= 1
        if self.command != "HEAD":
            with path.open("rb") as fh:
                fh.seek(start)
                try:
                    while sent < length:
                        chunk = fh.read(min(CHUNK, length - sent))
                        if not chunk:
                            break
                        if spoil:  # the first chunk only, same length
                            chunk = bytes(b ^ 0xFF for b in chunk[:64]) + chunk[64:]
                            spoil = False
                        self.wfile.write(chunk)
                        sent += len(chunk)
                        rate = self.hub.bytes_per_s
                        if rate:
                            time.sleep(len(chunk) / rate)
                except (BrokenPipeError, ConnectionResetError):
                    pass
        self._record(status, sent)

    # ---- routes ----------------------------------------------------------------------------------------------
    def do_HEAD(self):
        self.do_GET()

    def do_GET(self):
        url = urlparse(self.path)
        path, query = unquote(url.path), parse_qs(url.query)
        if path == "/_standin/log":
            with self.hub.lock:
                entries = list(self.hub.log)
            return self._json(200, entries)  # _json records the request: the lock must be free
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+?)(?:/revision/([^/]+))?/?", path)
        if m:
            return self.hf_repo_info(m.group(1), m.group(2) or "main", "blobs" in query)
        m = re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", path)
        if m:
            return self.hf_tree(m.group(1), m.group(2), (m.group(3) or "").strip("/"))
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m and not path.startswith("/api/"):
            return self.hf_resolve(m.group(1), m.group(2), m.group(3))
        m = re.fullmatch(r"/api/v1/models/([^/]+/[^/]+)(/revisions|/repo/files|/repo)?/?", path)
        if m:
            return self.modelscope(m.group(1), m.group(2) or "", query)
        m = re.fullmatch(r"/lfs/objects/([0-9a-f]{64})", path)
        if m:
            obj = self.hub.root / "lfs" / m.group(1)[:2] / m.group(1)[2:4] / m.group(1)
            return self._file(obj, {}) if obj.exists() else self._not_found("EntryNotFound", "no such LFS object")
        m = re.fullmatch(r"/([^/]+/[^/]+\.git)/(.+)", path)
        if m:
            target = (self.hub.root / "git" / m.group(1) / m.group(2)).resolve()
            if str(target).startswith(str((self.hub.root / "git").resolve())) and target.is_file():
                return self._file(target, {})
            return self._not_found("EntryNotFound", "not found")
        return self._not_found("NotFound", f"no route for {path}")

    def do_POST(self):
        path = urlparse(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if path == "/_standin/throttle":
            self.hub.bytes_per_s = int(json.loads(body or b"{}").get("bytes_per_s") or 0)
            return self._json(200, {"bytes_per_s": self.hub.bytes_per_s})
        if path == "/_standin/corrupt":
            req = json.loads(body or b"{}")
            with self.hub.lock:
                self.hub.corrupt[req["file"]] = int(req.get("times", 1))
            return self._json(200, {"corrupt": dict(self.hub.corrupt)})
        if path == "/_standin/gpu-memory":
            return self.gpu_memory(body)
        if path == "/_standin/reset-log":
            with self.hub.lock:
                self.hub.log.clear()
            return self._json(200, {"ok": True})  # outside the lock, as above
        m = re.fullmatch(r"/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m:
            return self.lfs_batch(m.group(1), json.loads(body or b"{}"))
        return self._not_found("NotFound", f"no route for POST {path}")

    def gpu_memory(self, body: bytes) -> None:
        from .gpu_memory import answer

        client = self.client_address[0]
        prefix = f"{self.hub.net}."
        if not self.hub.hosts_dir or not client.startswith(prefix) or not client[len(prefix):].isdigit():
            return self._json(404, {"error": f"{client} is not a lab host"})
        gpus = self.hub.hosts_dir / f"h{int(client[len(prefix):]) - 10}" / "root/etc/vlmfleet-lab/gpus.json"
        try:
            return self._json(200, answer(body, gpus))
        except (OSError, ValueError, KeyError, LookupError) as exc:
            return self._json(400, {"error": f"gpu memory stand-in: {exc}"})

    # ---- Hugging Face -------------------------------------------------------------------------------------------
    def _commit_or_404(self, repo: str, rev: str):
        if repo not in self.hub.index:
            self._not_found("RepoNotFound", f"Repository {repo} not found")
            return None
        commit = self.hub.resolve(repo, rev)
        if commit is None:
            self._not_found("RevisionNotFound", f"Invalid rev id: {rev}")
        return commit

    def _sibling(self, name: str, meta: dict, full: bool) -> dict:
        out = {"rfilename": name}
        if full:
            out["size"] = meta["size"]
            out["blobId"] = meta["blob_id"]
            if meta["lfs"]:
                out["lfs"] = {"sha256": meta["sha256"], "size": meta["size"], "pointerSize": 134}
        return out

    def hf_repo_info(self, repo: str, rev: str, full: bool) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return
        files = self.hub.index[repo]["files"]
        self._json(200, {
            "_id": commit[:24], "id": repo, "modelId": repo, "author": repo.split("/")[0], "sha": commit,
            "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z", "private": False,
            "disabled": False, "gated": False, "downloads": 0, "likes": 0, "library_name": "transformers",
            "pipeline_tag": "image-text-to-text", "tags": ["vlmfleet-lab-stand-in"],
            "siblings": [self._sibling(n, m, full) for n, m in files.items()],
            "usedStorage": sum(m["size"] for m in files.values()),
        })

    def hf_tree(self, repo: str, rev: str, prefix: str) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return
        entries = []
        for name, meta in self.hub.index[repo]["files"].items():
            if prefix and not name.startswith(prefix + "/"):
                continue
            e = {"type": "file", "oid": meta["blob_id"], "size": meta["size"], "path": name}
            if meta["lfs"]:
                e["lfs"] = {"oid": meta["sha256"], "size": meta["size"], "pointerSize": 134}
            entries.append(e)
        self._json(200, entries)

    def hf_resolve(self, repo: str, rev: str, name: str) -> None:
        commit = self._commit_or_404(repo, rev)
        if commit is None:
            return
        meta = self.hub.index[repo]["files"].get(name)
        if meta is None:
            return self._not_found("EntryNotFound", f"{name} does not exist on {rev}")
        etag = meta["sha256"] if meta["lfs"] else meta["blob_id"]
        headers = {"X-Repo-Commit": commit, "ETag": f'"{etag}"'}
        if meta["lfs"]:
            headers.update({"X-Linked-Etag": f'"{etag}"', "X-Linked-Size": str(meta["size"])})
        self._file(self.hub.file_path(repo, name), headers)

    # ---- ModelScope -------------------------------------------------------------------------------------------
    def modelscope(self, repo: str, sub: str, query: dict) -> None:
        rev = (query.get("Revision") or query.get("revision") or ["master"])[0]
        if repo not in self.hub.index:
            return self._json(404, {"Code": 10010205001, "Message": f"model {repo} not found", "Success": False})
        commit = self.hub.resolve(repo, rev)
        if commit is None:
            return self._json(404, {"Code": 10010205001, "Message": f"revision {rev} not found", "Success": False})
        files = self.hub.index[repo]["files"]
        if sub == "":
            return self._json(200, {"Code": 200, "Success": True, "Message": "success", "Data": {
                "Id": 1, "Name": repo.split("/")[1], "Path": repo.split("/")[0], "ChineseName": "",
                "ModelType": ["qwen2_5_vl"], "Revision": "master", "LatestCommitId": commit,
                "Tags": ["vlmfleet-lab-stand-in"]}})
        if sub == "/revisions":
            return self._json(200, {"Code": 200, "Success": True, "Data": {
                "RevisionMap": {"Branches": [{"Revision": "master", "CommitId": commit}], "Tags": []}}})
        if sub == "/repo/files":
            return self._json(200, {"Code": 200, "Success": True, "Message": "success", "Data": {"Files": [
                {"Name": n.split("/")[-1], "Path": n, "Revision": commit, "Size": m["size"], "Sha256": m["sha256"],
                 "Type": "blob", "IsLFS": m["lfs"], "CommitId": commit} for n, m in files.items()],
                "LatestCommitter": {"CommitterName": "vlmfleet lab"}}})
        name = (query.get("FilePath") or [""])[0]
        if name not in files:
            return self._json(404, {"Code": 10010205002, "Message": f"file {name} not found", "Success": False})
        self._file(self.hub.file_path(repo, name), {"ETag": f'"{files[name]["sha256"]}"'})

    # ---- git-lfs -----------------------------------------------------------------------------------------------
    def lfs_batch(self, repo: str, req: dict) -> None:
        base = f"http://{self.headers.get('Host')}"
        objects = []
        for obj in req.get("objects", []):
            path = self.hub.root / "lfs" / obj["oid"][:2] / obj["oid"][2:4] / obj["oid"]
            if path.exists():
                objects.append({"oid": obj["oid"], "size": path.stat().st_size, "authenticated": True,
                                "actions": {"download": {"href": f"{base}/lfs/objects/{obj['oid']}"}}})
            else:
                objects.append({"oid": obj["oid"], "size": obj.get("size", 0),
                                "error": {"code": 404, "message": "Object does not exist"}})
        raw = json.dumps({"transfer": "basic", "objects": objects, "hash_algo": "sha256"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.git-lfs+json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)
        self._record(200, len(raw))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--bind", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8081)
    ap.add_argument("--hosts-dir", type=Path, help="the lab's hosts folder (h<N>/root/etc/vlmfleet-lab/gpus.json)")
    ap.add_argument("--net", help="the lab's /24 as three octets, e.g. 10.77.0 (host N is .(10+N))")
    args = ap.parse_args()
    Handler.hub = Hub(args.root, args.hosts_dir, args.net)
    server = ThreadingHTTPServer((args.bind, args.port), Handler)
    server.daemon_threads = True
    print(f"hub stand-in serving {', '.join(Handler.hub.index)} on {args.bind}:{args.port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
