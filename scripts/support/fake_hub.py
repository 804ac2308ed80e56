"""A fake Hugging Face Hub for tests: a Hub host and a separate CDN host, on loopback.

It models what the Hub does that a downloader must get right:
revisions resolved to commits, a recursive tree listing paginated with `Link: rel="next"`,
`/resolve/` serving regular files itself and redirecting LFS files (302) to a signed, expiring
URL on another host, Range on both hosts, and the Hub's error signalling (401 for missing,
private or gated-without-token repos; 403 + X-Error-Code: GatedRepo; RevisionNotFound;
EntryNotFound).

Repositories:
  gen/<anything>             a model generated from its name: main, tag v1.0 (older commit),
                             branch dev, refs/pr/1; regular and LFS files, nested folders
  datasets gen/<anything>    a dataset (parquet shards as LFS files, README)
  org/private                private: needs the token
  org/gated                  gated: the token has not accepted the terms
  gen-expiring/<anything>    like gen/ but every CDN URL is refused after 2 requests
  cdn-<PORT>/<anything>      like gen/ but LFS redirects point at 127.0.0.1:PORT (a test's
                             fault-injecting proxy in front of this CDN; GET /_cdn gives its URL)

The trusted token is `hf_fake_token_0123456789`. Control endpoints (Hub host):
  GET /_log                        every request seen by both hosts, as JSON
  GET /_truth/{type}/{repo}@{rev}  {path: sha256} of the snapshot at that revision

  bench/<name>               with --local NAME=DIR: the files of DIR; files over 1 MiB are LFS
                             files served by --cdn-base (a fast static server, e.g. nginx, that
                             serves DIR's blobs by sha256 name), for benchmarks

Run: python fake_hub.py HUB_PORT CDN_PORT [--local NAME=DIR --cdn-base URL]
"""
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

TOKEN = "hf_fake_token_0123456789"
PAGE_SIZE = 3
HUB_PORT, CDN_PORT = int(sys.argv[1]), int(sys.argv[2])
LOCAL = dict(a.split("=", 1) for a in sys.argv[3:] if "=" in a and not a.startswith("http"))
CDN_BASE = next((a for a in sys.argv[3:] if a.startswith("http")), None)
HUB = f"http://127.0.0.1:{HUB_PORT}"
CDN = f"http://127.0.0.1:{CDN_PORT}"
LOG = []
LOG_LOCK = threading.Lock()
URLS = {}  # signed-url id -> [sha256, requests left or None]
URLS_LOCK = threading.Lock()


def stream(seed: str, n: int) -> bytes:
    """Deterministic incompressible bytes: sha256 in counter mode."""
    out, i = bytearray(), 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}:{i}".encode()).digest()
        i += 1
    return bytes(out[:n])


def blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class LocalBlob:
    """A large file of a local repo: only its size and sha256 are kept; the bytes are served by
    the external CDN (--cdn-base) under the sha256 name."""

    def __init__(self, path):
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        self.size, self.sha256 = os.path.getsize(path), h.hexdigest()


def size_of(d):
    return d.size if isinstance(d, LocalBlob) else len(d)


def sha256_of(d):
    return d.sha256 if isinstance(d, LocalBlob) else hashlib.sha256(d).hexdigest()


@lru_cache(maxsize=8)
def local_repo(rid, root):
    files = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            rel = os.path.relpath(p, root)
            files[rel] = LocalBlob(p) if os.path.getsize(p) > (1 << 20) else open(p, "rb").read()
    sha = commit_sha(rid, 0)
    return Repo("model", rid, {sha: files}, {"main": sha}, {p for p, d in files.items() if isinstance(d, LocalBlob)})


class Repo:
    def __init__(self, kind, rid, commits, refs, lfs, private=False, gated=False, expiring=False, cdn=None):
        self.kind, self.id, self.commits, self.refs = kind, rid, commits, refs
        self.lfs, self.private, self.gated, self.expiring = lfs, private, gated, expiring
        self.cdn = cdn or CDN

    def resolve(self, rev):
        if rev in self.refs:
            return self.refs[rev]
        matches = [c for c in self.commits if c.startswith(rev)] if len(rev) >= 7 else []
        return matches[0] if len(matches) == 1 else None


def commit_sha(rid, n):
    return hashlib.sha1(f"{rid}#{n}".encode()).hexdigest()


@lru_cache(maxsize=256)
def model_repo(rid, expiring=False):
    base = {
        ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
        "README.md": f"# {rid}\nA generated test model.\n".encode(),
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 64, "repo": rid}).encode(),
        "tokenizer.json": json.dumps({"version": "1.0", "vocab": {f"t{i}": i for i in range(500)}}).encode(),
        "generation_config.json": b'{"temperature": 0.7}',
        "empty.txt": b"",
        "sub/nested/with space ü.json": b'{"nested": true}',
        "model-00001-of-00002.safetensors": stream(rid + "/1", 3 * 1024 * 1024 + 12345),
        "model-00002-of-00002.safetensors": stream(rid + "/2", 1024 * 1024 + 7),
        "adapter/adapter_config.json": b'{"r": 8, "lora_alpha": 16}',
        "adapter/adapter_model.safetensors": stream(rid + "/adapter", 300 * 1024 + 3),
    }
    old = {
        ".gitattributes": base[".gitattributes"],
        "config.json": json.dumps({"model_type": "llama", "hidden_size": 32, "repo": rid}).encode(),
        "model.safetensors": stream(rid + "/old", 1024 * 1024 + 99),
    }
    dev = dict(base, **{"dev-notes.txt": b"work in progress\n"})
    pr = dict(base, **{"config.json": json.dumps({"model_type": "llama", "hidden_size": 128}).encode()})
    commits = {commit_sha(rid, i): files for i, files in enumerate([old, base, dev, pr])}
    shas = list(commits)
    refs = {"main": shas[1], "v1.0": shas[0], "dev": shas[2], "refs/pr/1": shas[3]}
    lfs = {p for files in commits.values() for p in files if p.endswith(".safetensors")}
    return Repo("model", rid, commits, refs, lfs, expiring=expiring)


@lru_cache(maxsize=64)
def dataset_repo(rid):
    files = {
        "README.md": b"---\nlicense: mit\n---\n# data\n",
        "data/train-00000-of-00002.parquet": stream(rid + "/t0", 700 * 1024),
        "data/train-00001-of-00002.parquet": stream(rid + "/t1", 650 * 1024 + 1),
        "data/test.jsonl": b'{"x": 1}\n{"x": 2}\n',
    }
    sha = commit_sha(rid, 0)
    return Repo("dataset", rid, {sha: files}, {"main": sha}, {p for p in files if p.endswith(".parquet")})


def find_repo(kind, rid):
    org, _, name = rid.partition("/")
    if kind == "model" and org == "bench" and name in LOCAL:
        return local_repo(rid, LOCAL[name])
    if kind == "model" and org == "gen" and name:
        return model_repo(rid)
    if kind == "model" and org == "gen-expiring" and name:
        return model_repo(rid, expiring=True)
    if kind == "model" and re.fullmatch(r"cdn-\d+", org) and name:
        r = model_repo(rid)
        return Repo("model", rid, r.commits, r.refs, r.lfs, cdn=f"http://127.0.0.1:{org[4:]}")
    if kind == "dataset" and org == "gen" and name:
        return dataset_repo(rid)
    if kind == "model" and rid == "org/private":
        r = model_repo(rid)
        return Repo("model", rid, r.commits, r.refs, r.lfs, private=True)
    if kind == "model" and rid == "org/gated":
        r = model_repo(rid)
        return Repo("model", rid, r.commits, r.refs, r.lfs, gated=True)
    return None


KINDS = {"models": "model", "datasets": "dataset", "spaces": "space"}
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_name_ = "hub"

    def setup(self):
        super().setup()
        # Headers and body go out in two writes. With Nagle's algorithm on, the body then waits
        # for the ACK of the headers, which the client delays by 40 ms on every request after
        # the first of a kept-alive connection (a paged tree listing took 42 ms a page). Real
        # servers send at once (nginx's `tcp_nodelay on`, its default for kept-alive
        # connections: https://nginx.org/en/docs/http/ngx_http_core_module.html#tcp_nodelay).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def record(self):
        u = urllib.parse.urlsplit(self.path)
        with LOG_LOCK:
            LOG.append({
                "server": self.server_name_, "method": self.command, "path": urllib.parse.unquote(u.path),
                "query": u.query, "auth": self.headers.get("Authorization"), "range": self.headers.get("Range"),
            })

    def send(self, code, body=b"", headers=None, ctype="application/json"):
        self.send_response(code)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if body or code not in (204, 304):
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def error(self, code, err_code, msg, extra=None):
        h = {"X-Error-Message": msg}
        if err_code:
            h["X-Error-Code"] = err_code
        h.update(extra or {})
        self.send(code, json.dumps({"error": msg}).encode(), h)

    def send_data(self, data, headers):
        """200 or 206 for a Range request, as S3 and the Hub do."""
        headers = dict(headers, **{"Accept-Ranges": "bytes"})
        rng = self.headers.get("Range")
        if rng:
            m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                return self.send(416, b"", headers)
            if m.group(1) == "":
                start, end = max(0, len(data) - int(m.group(2))), len(data) - 1
            else:
                start = int(m.group(1))
                end = min(int(m.group(2)), len(data) - 1) if m.group(2) else len(data) - 1
            if start >= len(data) or start > end:
                return self.send(416, b"", dict(headers, **{"Content-Range": f"bytes */{len(data)}"}))
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
            return self.send(206, data[start:end + 1], headers, "application/octet-stream")
        return self.send(200, data, headers, "application/octet-stream")

    # ---- auth -------------------------------------------------------------------------------

    def auth_state(self):
        a = self.headers.get("Authorization")
        if not a:
            return "none"
        return "ok" if a == f"Bearer {TOKEN}" else "bad"

    def check_access(self, repo, download):
        """Returns True if the request may proceed; otherwise sends the Hub's answer."""
        state = self.auth_state()
        if state == "bad":
            self.error(401, None, "Invalid credentials in Authorization header")
            return False
        if repo is None or (repo.private and state != "ok"):
            # The Hub answers 401 for missing and private repos alike when unauthenticated.
            code = 404 if state == "ok" else 401
            self.error(code, "RepoNotFound", "Repository not found")
            return False
        if repo.gated and download:
            if state == "none":
                self.error(401, "GatedRepo", f"Access to model {repo.id} is restricted. You must have access to it and be authenticated to access it. Please log in.")
            else:
                self.error(403, "GatedRepo", f"Access to model {repo.id} is restricted and you are not in the authorized list. Visit https://huggingface.co/{repo.id} to ask for access.")
            return False
        return True

    # ---- routes -----------------------------------------------------------------------------

    def do_HEAD(self):
        self.handle_any()

    def do_GET(self):
        self.handle_any()

    def handle_any(self):
        self.record()
        u = urllib.parse.urlsplit(self.path)
        raw = u.path
        query = urllib.parse.parse_qs(u.query)
        if raw == "/_cdn":
            return self.send(200, json.dumps({"url": CDN}).encode())
        if raw == "/_log":
            with LOG_LOCK:
                return self.send(200, json.dumps(LOG).encode())
        if m := re.fullmatch(r"/_truth/(model|dataset)/([^/]+/[^/@]+)@(.+)", raw):
            repo = find_repo(m.group(1), m.group(2))
            sha = repo and repo.resolve(urllib.parse.unquote(m.group(3)))
            if not sha:
                return self.send(404, b"{}")
            files = {p: sha256_of(d) for p, d in repo.commits[sha].items()}
            return self.send(200, json.dumps({"sha": sha, "files": files}).encode())
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)/revision/([^/]+)", raw):
            return self.api_revision(KINDS[m.group(1)], m.group(2), urllib.parse.unquote(m.group(3)))
        if m := re.fullmatch(r"/api/(models|datasets|spaces)/([^/]+/[^/]+)/tree/([^/]+)(/.*)?", raw):
            path = urllib.parse.unquote(m.group(4) or "").strip("/")
            return self.api_tree(KINDS[m.group(1)], m.group(2), urllib.parse.unquote(m.group(3)), path, query)
        if m := re.fullmatch(r"/(datasets/|spaces/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)", raw):
            kind = {"datasets/": "dataset", "spaces/": "space"}.get(m.group(1) or "", "model")
            return self.resolve(kind, m.group(2), urllib.parse.unquote(m.group(3)), urllib.parse.unquote(m.group(4)))
        self.error(404, "RepoNotFound", "Repository not found")

    def lookup(self, kind, rid, rev, download=False):
        repo = find_repo(kind, rid)
        if not self.check_access(repo, download):
            return None, None
        sha = repo.resolve(rev)
        if sha is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            return None, None
        return repo, sha

    def api_revision(self, kind, rid, rev):
        repo, sha = self.lookup(kind, rid, rev)
        if repo is None:
            return
        files = repo.commits[sha]
        self.send(200, json.dumps({
            "id": rid, "sha": sha, "private": repo.private, "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": p} for p in sorted(files)],
        }).encode())

    def api_tree(self, kind, rid, rev, path, query):
        repo, sha = self.lookup(kind, rid, rev)
        if repo is None:
            return
        files = repo.commits[sha]
        prefix = path + "/" if path else ""
        if path and not any(p.startswith(prefix) for p in files):
            return self.error(404, "EntryNotFound", f"{path} does not exist on {rev}")
        recursive = query.get("recursive", ["false"])[0] == "true"
        entries, dirs = [], set()
        for p in sorted(files):
            if not p.startswith(prefix):
                continue
            rest = p[len(prefix):]
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = prefix + "/".join(parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0, "path": d})
            if not recursive and len(parts) > 1:
                continue
            data = files[p]
            e = {"type": "file", "size": size_of(data), "path": p}
            if p in repo.lfs:
                e["lfs"] = {"oid": sha256_of(data), "size": size_of(data), "pointerSize": 134}
                e["oid"] = blob_sha1(b"version https://git-lfs.github.com/spec/v1\n")
            else:
                e["oid"] = blob_sha1(data)
            entries.append(e)
        cursor = int(query.get("cursor", ["0"])[0])
        page = entries[cursor:cursor + PAGE_SIZE]
        headers = {}
        if cursor + PAGE_SIZE < len(entries):
            q = urllib.parse.urlencode({"recursive": "true" if recursive else "false", "cursor": cursor + PAGE_SIZE})
            u = urllib.parse.urlsplit(self.path)
            # As the Hub does, the next page on the host the client asked (a front may stand
            # before this server).
            host = self.headers.get("Host") or HUB.removeprefix("http://")
            headers["Link"] = f'<http://{host}{u.path}?{q}>; rel="next"'
        self.send(200, json.dumps(page).encode(), headers)

    def resolve(self, kind, rid, rev, path):
        repo, sha = self.lookup(kind, rid, rev, download=True)
        if repo is None:
            return
        files = repo.commits[sha]
        if path not in files:
            return self.error(404, "EntryNotFound", f"{path} does not exist on {rev}", {"X-Repo-Commit": sha})
        data = files[path]
        headers = {"X-Repo-Commit": sha}
        if path in repo.lfs:
            digest = sha256_of(data)
            if isinstance(data, LocalBlob):
                headers.update({
                    "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(data.size), "ETag": f'"{digest}"',
                    "Location": f"{CDN_BASE}/{digest}?X-Amz-Signature=bench",
                })
                return self.send(302, b"", headers)
            uid = hashlib.sha1(f"{time.time_ns()}{threading.get_ident()}".encode()).hexdigest()[:16]
            with URLS_LOCK:
                URLS[uid] = [data, 2 if repo.expiring else None]
            headers.update({
                "X-Linked-Etag": f'"{digest}"', "X-Linked-Size": str(len(data)), "ETag": f'"{digest}"',
                "Location": f"{repo.cdn}/lfs/{digest}?X-Amz-Signature=sig{uid}&id={uid}",
            })
            return self.send(302, b"", headers)
        headers["ETag"] = f'"{blob_sha1(data)}"'
        self.send_data(data, headers)


class CdnHandler(Handler):
    server_name_ = "cdn"

    def handle_any(self):
        self.record()
        u = urllib.parse.urlsplit(self.path)
        uid = urllib.parse.parse_qs(u.query).get("id", [""])[0]
        with URLS_LOCK:
            entry = URLS.get(uid)
            if entry and entry[1] is not None:
                if entry[1] <= 0:
                    entry = "expired"
                else:
                    entry[1] -= 1
        if entry is None:
            return self.send(404, b"<Error><Code>NoSuchKey</Code></Error>", ctype="application/xml")
        if entry == "expired":
            return self.send(403, b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>", ctype="application/xml")
        self.send_data(entry[0], {"ETag": f'"{hashlib.sha256(entry[0]).hexdigest()}"'})


def main():
    hub = ThreadingHTTPServer(("127.0.0.1", HUB_PORT), Handler)
    cdn = ThreadingHTTPServer(("127.0.0.1", CDN_PORT), CdnHandler)
    hub.daemon_threads = cdn.daemon_threads = True
    threading.Thread(target=cdn.serve_forever, daemon=True).start()
    print("ready", flush=True)
    hub.serve_forever()


if __name__ == "__main__":
    main()
