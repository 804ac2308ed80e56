#!/usr/bin/env python3
"""Reads a ModelPack artifact with the oras Python client (PyPI `oras`), independent of
model-loader: each layer's blob, checked against its digest, written at its
org.cncf.model.filepath under OUTDIR. Prints the manifest (JSON) on stdout.

usage: oci_pull.py REGISTRY REPO:TAG OUTDIR
"""
import hashlib
import json
import os
import sys

import oras.provider


def main():
    registry, ref, out = sys.argv[1:4]
    reg = oras.provider.Registry(hostname=registry, insecure=True)
    container = reg.get_container(f"{registry}/{ref}")
    manifest = reg.get_manifest(container)
    for layer in manifest["layers"]:
        rel = layer["annotations"]["org.cncf.model.filepath"]
        path = os.path.join(out, rel)
        if os.path.commonpath([os.path.abspath(out), os.path.abspath(path)]) != os.path.abspath(out):
            sys.exit(f"layer path {rel!r} leaves {out}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        reg.download_blob(container, layer["digest"], path)
        with open(path, "rb") as f:
            got = "sha256:" + hashlib.sha256(f.read()).hexdigest()
        if got != layer["digest"] or os.path.getsize(path) != layer["size"]:
            sys.exit(f"{rel}: {got} != {layer['digest']}")
    print(json.dumps(manifest))


if __name__ == "__main__":
    main()
