"""Trusts the fake Hub only as far as the official client does: downloads its repositories with
huggingface_hub (snapshot_download / hf_hub_download into a local dir) and checks every file
against the fake's ground truth, and that its errors map to the client's exception types.

Usage: HF_ENDPOINT=http://127.0.0.1:PORT python check_fake_hub.py WORKDIR
"""
import hashlib
import json
import os
import sys
import urllib.request

import huggingface_hub as hh
from huggingface_hub import errors

TOKEN = "hf_fake_token_0123456789"
ENDPOINT = os.environ["HF_ENDPOINT"]
WORK = sys.argv[1]


def truth(kind, repo, rev):
    with urllib.request.urlopen(f"{ENDPOINT}/_truth/{kind}/{repo}@{rev}") as r:
        return json.load(r)


def tree(root):
    out = {}
    for d, dirs, files in os.walk(root):
        dirs[:] = [x for x in dirs if x != ".cache"]
        for f in files:
            p = os.path.join(d, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def check_snapshot(kind, repo, rev, token=None):
    dest = os.path.join(WORK, kind, repo.replace("/", "--"), rev.replace("/", "--"))
    hh.snapshot_download(repo_id=repo, repo_type=kind, revision=rev, local_dir=dest, token=token)
    want = truth(kind, repo, rev)["files"]
    got = tree(dest)
    assert got == want, f"{kind} {repo}@{rev}: huggingface_hub got {sorted(got)} != {sorted(want)}"
    print(f"ok: huggingface_hub {hh.__version__} snapshot {kind} {repo}@{rev}: {len(got)} files byte-identical")


def expect(exc, fn):
    try:
        fn()
    except exc as e:
        print(f"ok: {exc.__name__}: {str(e).splitlines()[0][:100]}")
        return
    raise AssertionError(f"expected {exc.__name__}")


check_snapshot("model", "gen/python-check", "main")
check_snapshot("model", "gen/python-check", "v1.0")
check_snapshot("model", "gen/python-check", "refs/pr/1")
check_snapshot("model", "gen/python-check", truth("model", "gen/python-check", "dev")["sha"])
check_snapshot("dataset", "gen/python-data", "main")
check_snapshot("model", "org/private", "main", token=TOKEN)
check_snapshot("model", "gen-expiring/python-check", "main")

one = hh.hf_hub_download("gen/python-check", "sub/nested/with space ü.json", local_dir=os.path.join(WORK, "one"))
assert hashlib.sha256(open(one, "rb").read()).hexdigest() == truth("model", "gen/python-check", "main")["files"]["sub/nested/with space ü.json"]
print("ok: hf_hub_download of one nested file")

listed = sorted(f.path for f in hh.list_repo_tree("gen/python-check", recursive=True) if isinstance(f, hh.hf_api.RepoFile))
assert listed == sorted(truth("model", "gen/python-check", "main")["files"]), listed
print(f"ok: list_repo_tree follows pagination ({len(listed)} files)")

expect(errors.RepositoryNotFoundError, lambda: hh.snapshot_download("org/private", local_dir=os.path.join(WORK, "x1"), token=False))
expect(errors.GatedRepoError, lambda: hh.hf_hub_download("org/gated", "config.json", local_dir=os.path.join(WORK, "x2"), token=TOKEN))
expect(errors.RevisionNotFoundError, lambda: hh.hf_hub_download("gen/python-check", "config.json", revision="nope", local_dir=os.path.join(WORK, "x3")))
expect(errors.EntryNotFoundError, lambda: hh.hf_hub_download("gen/python-check", "missing.bin", local_dir=os.path.join(WORK, "x4")))
print("fake Hub agrees with huggingface_hub")
