#!/usr/bin/env python3
"""A registry's token service and Bearer gate, in front of a registry that has none (Debian's
docker-registry with no auth), as Docker Hub, GHCR, Harbor and ECR behave: a request without a
valid token gets 401 and `WWW-Authenticate: Bearer realm=…,service=…,scope=…`; the realm trades
Basic credentials for a token that expires (distribution's docs/spec/auth/token.md: "expires_in
… When omitted, this defaults to 60 seconds"); valid requests are forwarded with their Range and
the reply streamed back.

usage: oci_token_front.py PORT BACKEND_URL USER PASSWORD EXPIRE_AFTER_S ANNOUNCED_S [REDIRECT_URL [basic]]

With `basic`, the gate asks for Basic credentials on every request instead of a token, as ECR
does (`WWW-Authenticate: Basic realm="https://ACCOUNT.dkr.ecr.REGION.amazonaws.com/",
service="ecr.amazonaws.com"`; its password is what GetAuthorizationToken returns).

A token stops working EXPIRE_AFTER_S seconds after it was issued; the reply says it lasts
ANNOUNCED_S (a shorter real life than announced is how a client meets a 401 mid-download,
as with a revoked or clock-skewed token).

GET /_stats: {"tokens": N, "denied": N, "blob_gets": N, "manifest_gets": N, "expired": N
(requests refused for an expired token), "expired_distinct": N (tokens refused so),
"uploads": N (blob upload sessions opened), "manifest_puts": N}.
"""
import http.client
import json
import os
import secrets
import socket
import sys
import threading
import time
import urllib.parse
from base64 import b64decode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT, BACKEND, USER, PASSWORD, TTL, ANNOUNCED = sys.argv[1:7]
# Optional: blob GETs are answered with a 307 to this origin (the same path), as registries
# on object storage redirect to it (distribution's S3 and GCS drivers); manifest GETs too, as
# registry.k8s.io sends every request to a regional registry.
REDIRECT = sys.argv[7] if len(sys.argv) > 7 else ""
BASIC = len(sys.argv) > 8 and sys.argv[8] == "basic"
# FRONT_REALM=https-host: the challenges name the realm at https://<the request's Host>, for a
# front reached through a TLS front under another name (a realm must be reachable the way the
# registry is); else at this front's own plain address.
REALM_HTTPS_HOST = os.environ.get("FRONT_REALM") == "https-host"
# FRONT_FAIL_BLOB_PUTS=1: every blob upload's PUT is answered 500 (a registry whose storage
# fails mid-push).
FAIL_BLOB_PUTS = os.environ.get("FRONT_FAIL_BLOB_PUTS") == "1"
PORT, TTL, ANNOUNCED = int(PORT), float(TTL), int(ANNOUNCED)
BACKEND = urllib.parse.urlsplit(BACKEND)
TOKENS = {}  # token -> expiry
STATS = {"tokens": 0, "denied": 0, "blob_gets": 0, "manifest_gets": 0, "expired": 0,
         "expired_distinct": 0, "uploads": 0, "manifest_puts": 0}
EXPIRED_SEEN = set()
LOCK = threading.Lock()
HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
       "proxy-authorization", "proxy-authenticate", "authorization", "host"}


class Front(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def setup(self):
        super().setup()
        # Headers and body are separate writes: without this, Nagle's algorithm holds the body
        # for the client's delayed ACK (40 ms) on every request after a connection's first, as
        # no real registry does (see fake_hub.py).
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urllib.parse.urlsplit(self.path).path
        if path == "/_stats":
            with LOCK:
                return self.reply(200, STATS)
        if path == "/token":
            return self.token()
        return self.forward("GET")

    def do_HEAD(self):
        return self.forward("HEAD")

    def do_POST(self):
        return self.forward("POST")

    def do_PUT(self):
        return self.forward("PUT")

    def do_PATCH(self):
        return self.forward("PATCH")

    def basic_ok(self):
        auth = self.headers.get("Authorization", "")
        if not auth.startswith("Basic "):
            return False
        try:
            user, _, pw = b64decode(auth[6:]).decode().partition(":")
            return user == USER and pw == PASSWORD
        except Exception:
            return False

    def token(self):
        ok = self.basic_ok()
        with LOCK:
            if not ok:
                STATS["denied"] += 1
            else:
                STATS["tokens"] += 1
        if not ok:
            return self.reply(401, {"details": "incorrect username or password"})
        token = secrets.token_hex(16)
        with LOCK:
            TOKENS[token] = time.monotonic() + TTL
        self.reply(200, {"token": token, "expires_in": ANNOUNCED})

    def authorized(self):
        auth = self.headers.get("Authorization", "")
        if BASIC:
            ok = self.basic_ok()
            if not ok and auth:
                with LOCK:
                    STATS["denied"] += 1
            return ok
        if not auth.startswith("Bearer "):
            return False
        with LOCK:
            until = TOKENS.get(auth[7:])
            if until is not None and until < time.monotonic():
                STATS["expired"] += 1
                EXPIRED_SEEN.add(auth[7:])
                STATS["expired_distinct"] = len(EXPIRED_SEEN)
                return False
        return until is not None

    def forward(self, method):
        path = urllib.parse.urlsplit(self.path).path
        if not self.authorized():
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            repo = path[len("/v2/"):].rsplit("/", 2)[0] if path.startswith("/v2/") else ""
            realm = f"https://{self.headers['Host']}" if REALM_HTTPS_HOST else f"http://127.0.0.1:{PORT}"
            challenge = (f'Bearer realm="{realm}/token",service="test-registry",'
                         f'scope="repository:{repo}:pull"')
            if BASIC:
                challenge = f'Basic realm="{realm}/",service="ecr.amazonaws.com"'
            return self.reply(401, {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]},
                              [("WWW-Authenticate", challenge)])
        with LOCK:
            if "/blobs/" in path and method == "GET":
                STATS["blob_gets"] += 1
            if "/manifests/" in path and method == "GET":
                STATS["manifest_gets"] += 1
            if path.endswith("/blobs/uploads/") and method == "POST":
                STATS["uploads"] += 1
            if "/manifests/" in path and method == "PUT":
                STATS["manifest_puts"] += 1
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if FAIL_BLOB_PUTS and "/blobs/uploads/" in path and method == "PUT":
            return self.reply(500, {"errors": [{"code": "UNKNOWN", "message": "storage failed"}]})
        if REDIRECT and ("/blobs/sha256:" in path or "/manifests/" in path) and method == "GET":
            self.send_response(307)
            self.send_header("Location", REDIRECT + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        conn = http.client.HTTPConnection(BACKEND.hostname, BACKEND.port, timeout=60)
        headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        conn.request(method, self.path, body=body or None, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status)
        for k, v in resp.getheaders():
            if k.lower() == "location" and v.startswith(f"http://{BACKEND.netloc}"):
                # Upload sessions: the client comes back through the front.
                v = f"http://127.0.0.1:{PORT}" + v[len(f"http://{BACKEND.netloc}"):]
            if k.lower() not in HOP:
                self.send_header(k, v)
        if resp.getheader("Content-Length") is None:
            # The body's end is the connection's end.
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        while method != "HEAD":
            block = resp.read(1 << 16)
            if not block:
                break
            try:
                self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                break
        conn.close()


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer(("127.0.0.1", PORT), Front).serve_forever()
