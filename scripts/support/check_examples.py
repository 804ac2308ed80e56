"""Every example YAML parses, and every model-loader option it names exists.

Usage: python check_examples.py BIN examples/*.yaml
Options are compared with `BIN --help`: flags (`--check`) in commands/args of containers that
run the loader, and `MODEL_LOADER_*` environment variables anywhere.
"""
import re
import subprocess
import sys

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


count = 0
for f in files:
    docs = list(yaml.safe_load_all(open(f)))
    for i, d in enumerate(docs):
        if d is None:
            continue
        count += 1
        walk(d, f"{f}#{i}")
        if isinstance(d, dict) and ("apiVersion" in d) != ("kind" in d):
            errors.append(f"{f}#{i}: a Kubernetes object needs both apiVersion and kind")
if errors:
    print("\n".join(errors))
    sys.exit(1)
print(f"ok: {count} YAML documents in {len(files)} files parse and name only existing options")
