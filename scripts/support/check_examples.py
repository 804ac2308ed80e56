"""Every example YAML parses, and every model-loader option it names exists.

Usage: python check_examples.py BIN examples/*.yaml
Options are compared with `BIN --help`: flags (`--check`) in commands/args of containers that
run the loader, and `MODEL_LOADER_*` environment variables anywhere. KServe objects are held to
KServe's own rules (kserve/kserve: `storage_container_types.go`, `inference_service_validation.go`
validateMultipleStorageURIsSpec), and the SRC DEST pairs an InferenceService makes KServe pass
are given to `BIN --check`, which must accept them (exit 1, "not complete", not 2).
"""
import os
import re
import subprocess
import sys
import tempfile

import yaml

bin_, files = sys.argv[1], sys.argv[2:]
help_text = subprocess.run([bin_, "--help"], capture_output=True, text=True, check=True).stdout
flags = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
envs = set(re.findall(r"MODEL_LOADER_[A-Z_]+", help_text))
errors = []


def walk(node, path):
    if isinstance(node, dict):
        if "image" in node and "model-loader" in str(node.get("image")):
            words = [str(w) for w in (node.get("command") or []) + (node.get("args") or [])]
            probe = node.get("readinessProbe", {}).get("exec", {}).get("command", [])
            for w in words + [str(x) for x in probe]:
                if w.startswith("--") and w.split("=")[0] not in flags:
                    errors.append(f"{path}: unknown flag {w}")
        for k, v in node.items():
            walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}[{i}]")
    elif isinstance(node, str):
        for e in re.findall(r"MODEL_LOADER_[A-Z_]+", node):
            if e not in envs:
                errors.append(f"{path}: unknown variable {e}")


def check_kserve(d, where):
    kind, spec = d.get("kind"), d.get("spec") or {}
    if kind == "ClusterStorageContainer":
        if not isinstance(spec.get("container"), dict):
            errors.append(f"{where}: spec.container is required")
        formats = spec.get("supportedUriFormats") or []
        if not formats:
            errors.append(f"{where}: spec.supportedUriFormats is required")
        for u in formats:
            if ("prefix" in u) == ("regex" in u):
                errors.append(f"{where}: each supportedUriFormats item has a prefix or a regex: {u}")
        if spec.get("workloadType", "initContainer") not in ("initContainer", "localModelDownloadJob"):
            errors.append(f"{where}: unknown workloadType {spec.get('workloadType')}")
        if not isinstance(spec.get("supportsMultiModelDownload", False), bool):
            errors.append(f"{where}: supportsMultiModelDownload is a boolean")
        if "model-loader" in str(spec.get("container", {}).get("image")):
            for u in formats:
                p = u.get("prefix", "")
                if p and p not in ("s3://", "gs://", "hf://", "oss://"):
                    errors.append(f"{where}: model-loader does not load {p}")
    if kind == "InferenceService":
        uris = (spec.get("predictor") or {}).get("storageUris") or []
        paths = [u.get("mountPath", "") for u in uris]
        for p in paths:
            if not p.startswith("/") or p == "/" or ".." in p:
                errors.append(f"{where}: mountPath {p!r} must be absolute, not /, without '..'")
        if len(set(paths)) != len(paths):
            # KServe merges two storageUris into one mountPath; model-loader refuses that.
            errors.append(f"{where}: two storageUris share a mountPath; model-loader gives each its own")
        if len(paths) > 1 and os.path.commonpath(paths) == "/":
            errors.append(f"{where}: KServe needs the mountPaths under one parent other than /")
        if uris:
            args = [x for u in uris for x in (u["uri"], u["mountPath"])]
            with tempfile.TemporaryDirectory() as tmp:
                # The mount paths as folders of an empty scratch tree: --check reads nothing else.
                local = [a if i % 2 == 0 else tmp + a for i, a in enumerate(args)]
                r = subprocess.run([bin_, "--check", *local], capture_output=True, text=True)
            if r.returncode != 1:
                errors.append(f"{where}: `model-loader --check {' '.join(args)}` exited {r.returncode}, "
                              f"not 1 (not complete): {r.stderr.strip()}")


count = 0
for f in files:
    docs = list(yaml.safe_load_all(open(f)))
    for i, d in enumerate(docs):
        if d is None:
            continue
        count += 1
        walk(d, f"{f}#{i}")
        if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("serving.kserve.io/"):
            check_kserve(d, f"{f}#{i}")
        if isinstance(d, dict) and ("apiVersion" in d) != ("kind" in d):
            errors.append(f"{f}#{i}: a Kubernetes object needs both apiVersion and kind")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok: {count} YAML documents in {len(files)} files parse and name only existing options")
