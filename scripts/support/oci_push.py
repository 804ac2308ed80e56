#!/usr/bin/env python3
"""Pushes test artifacts to a registry with the oras Python client (PyPI `oras`), a client
independent of model-loader, in the layouts the loader reads (and some it must refuse).

usage: oci_push.py LAYOUT REGISTRY REPO:TAG DIR
       oci_push.py layers REGISTRY REPO:TAG CONFIG_MEDIA_TYPE[@CONFIG_FILE] FILE|MEDIA_TYPE[|KEY=VALUE,…]…

  oras       `oras push` of every file directly in DIR: one layer each, titled by its name
  modelpack  one raw layer per file under DIR (recursively), its relative path in
             org.cncf.model.filepath, and a ModelPack config (what `modctl build --raw` makes)
  legacy     the same with the older vnd.cnai strings
  index      the modelpack manifest behind an index with linux/amd64 and linux/arm64 entries
  packed     a ModelPack manifest whose one layer is DIR as a tar (refused until unpacking lands)
  unnamed    one layer with no path annotation (refused: it names no file)
  hostile    a ModelPack layer whose path climbs out of DEST (../../escape.txt)
  oras-dir   `oras push` of the folder DIR itself (a tar+gzip layer marked for unpacking)
  layers     prebuilt blobs (tars built by the test) as the layers of one manifest, with the
             config media type given (an image's makes it a modelcar image)

Plain HTTP (the registry is on loopback). Prints the digest of what the tag points at.
"""
import hashlib
import io
import json
import os
import sys
import tarfile
import tempfile

import oras.defaults
import oras.oci
import oras.provider

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return "sha256:" + h.hexdigest()


def descriptor(path, media_type, annotations=None):
    d = {"mediaType": media_type, "digest": sha256_file(path), "size": os.path.getsize(path)}
    if annotations:
        d["annotations"] = annotations
    return d


def put_manifest(reg, container, doc, media_type, reference):
    body = json.dumps(doc, separators=(",", ":")).encode()
    url = f"{reg.prefix}://{container.registry}/v2/{container.api_prefix}/manifests/{reference}"
    r = reg.do_request(url, "PUT", data=body, headers={"Content-Type": media_type})
    if r.status_code not in (200, 201):
        sys.exit(f"manifest PUT {url}: {r.status_code} {r.text}")
    return "sha256:" + hashlib.sha256(body).hexdigest()


def upload(reg, container, path, layer):
    r = reg.upload_blob(path, container, layer)
    if r.status_code not in (200, 201, 202):
        sys.exit(f"blob upload {path}: {r.status_code} {r.text}")


def modelpack(reg, container, root, legacy, tag):
    ns = "cnai" if legacy else "cncf"
    key = f"org.{ns}.model.filepath"
    layers = []
    for dirpath, _, names in sorted(os.walk(root)):
        for name in sorted(names):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            kind = "weight" if rel.endswith((".safetensors", ".bin", ".gguf")) else "weight.config"
            d = descriptor(path, f"application/vnd.{ns}.model.{kind}.v1.raw", {key: rel})
            upload(reg, container, path, d)
            layers.append(d)
    config = {"descriptor": {"name": "test"}, "config": {"format": "safetensors"},
              "modelfs": {"type": "layers", "diffIds": [d["digest"] for d in layers]}}
    return push_manifest(reg, container, layers, config, f"application/vnd.{ns}.model.config.v1+json",
                         f"application/vnd.{ns}.model.manifest.v1+json", tag)


def push_manifest(reg, container, layers, config, config_type, artifact_type, tag):
    with tempfile.NamedTemporaryFile("wb", delete=False) as f:
        f.write(json.dumps(config).encode())
    cfg = descriptor(f.name, config_type)
    upload(reg, container, f.name, cfg)
    os.unlink(f.name)
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": cfg, "layers": layers}
    if artifact_type:
        doc["artifactType"] = artifact_type
    return put_manifest(reg, container, doc, OCI_MANIFEST, tag)


def index(reg, container, root, tag):
    inner = modelpack(reg, container, root, False, tag + "-amd64")
    size = len(reg.do_request(
        f"{reg.prefix}://{container.registry}/v2/{container.api_prefix}/manifests/{inner}",
        headers={"Accept": OCI_MANIFEST}).content)
    # The arm64 entry points at a manifest with only the first file, so a wrong pick shows.
    entries = [{"mediaType": OCI_MANIFEST, "digest": inner, "size": size,
                "platform": {"os": "linux", "architecture": "amd64"}}]
    first = next(iter(sorted(os.listdir(root))))
    with tempfile.TemporaryDirectory() as d:
        os.link(os.path.join(root, first), os.path.join(d, first))
        other = modelpack(reg, container, d, False, tag + "-arm64")
    size_other = len(reg.do_request(
        f"{reg.prefix}://{container.registry}/v2/{container.api_prefix}/manifests/{other}",
        headers={"Accept": OCI_MANIFEST}).content)
    entries.insert(0, {"mediaType": OCI_MANIFEST, "digest": other, "size": size_other,
                       "platform": {"os": "linux", "architecture": "arm64"}})
    doc = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
    return put_manifest(reg, container, doc, OCI_INDEX, tag)


def single(reg, container, path, media_type, annotations, tag):
    d = descriptor(path, media_type, annotations)
    upload(reg, container, path, d)
    return push_manifest(reg, container, [d], {}, "application/vnd.cncf.model.config.v1+json",
                         "application/vnd.cncf.model.manifest.v1+json", tag)


def layers(reg, container, config_type, specs, tag):
    """CONFIG_TYPE may end in @FILE: the config blob's bytes (a Kitfile, say)."""
    config = {"rootfs": {"type": "layers"}}
    if "@" in config_type:
        config_type, path = config_type.split("@", 1)
        with open(path) as f:
            config = json.load(f)
    descs = []
    for spec in specs:
        path, media_type, *ann = spec.split("|")
        annotations = dict(kv.split("=", 1) for kv in ann[0].split(",")) if ann and ann[0] else None
        d = descriptor(path, media_type, annotations)
        upload(reg, container, path, d)
        descs.append(d)
    return push_manifest(reg, container, descs, config, config_type, None, tag)


def main():
    if sys.argv[1] == "layers":
        registry, ref, config_type = sys.argv[2:5]
        reg = oras.provider.Registry(hostname=registry, insecure=True)
        container = reg.get_container(f"{registry}/{ref}")
        print(layers(reg, container, config_type, sys.argv[5:], container.tag))
        return
    layout, registry, ref, root = sys.argv[1:5]
    reg = oras.provider.Registry(hostname=registry, insecure=True)
    container = reg.get_container(f"{registry}/{ref}")
    tag = container.tag
    if layout == "oras":
        files = [f"{name}:application/vnd.oci.image.layer.v1.tar" for name in sorted(os.listdir(root))
                 if not name.startswith(".")]
        cwd = os.getcwd()
        os.chdir(root)
        try:
            r = reg.push(target=f"{registry}/{ref}", files=files, quiet=True)
        finally:
            os.chdir(cwd)
        if r.status_code not in (200, 201):
            sys.exit(f"oras push: {r.status_code} {r.text}")
        digest = r.headers.get("Docker-Content-Digest", "")
    elif layout in ("modelpack", "legacy"):
        digest = modelpack(reg, container, root, layout == "legacy", tag)
    elif layout == "index":
        digest = index(reg, container, root, tag)
    elif layout == "packed":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            t.add(root, arcname=".")
        with tempfile.NamedTemporaryFile("wb", delete=False) as f:
            f.write(buf.getvalue())
        digest = single(reg, container, f.name, "application/vnd.cncf.model.weight.v1.tar",
                        {"org.cncf.model.filepath": "model"}, tag)
        os.unlink(f.name)
    elif layout == "oras-dir":
        parent, name = os.path.split(os.path.abspath(root))
        cwd = os.getcwd()
        os.chdir(parent)
        try:
            r = reg.push(target=f"{registry}/{ref}", files=[name], quiet=True)
        finally:
            os.chdir(cwd)
        if r.status_code not in (200, 201):
            sys.exit(f"oras push: {r.status_code} {r.text}")
        digest = r.headers.get("Docker-Content-Digest", "")
    elif layout == "hostile":
        first = os.path.join(root, sorted(os.listdir(root))[0])
        digest = single(reg, container, first, "application/vnd.cncf.model.weight.v1.raw",
                        {"org.cncf.model.filepath": "../../escape.txt"}, tag)
    elif layout == "unnamed":
        first = os.path.join(root, sorted(os.listdir(root))[0])
        digest = single(reg, container, first, "application/vnd.ollama.image.model", None, tag)
    else:
        sys.exit(f"unknown layout {layout}")
    print(digest)


if __name__ == "__main__":
    main()
