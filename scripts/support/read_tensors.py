"""Reads every tensor of every safetensors file under a folder once, as an inference engine's
loader does (vLLM's default loader iterates `safe_open(...).get_tensor` over each shard).

Usage: python read_tensors.py DIR [--blobs]
With --blobs, files are taken by content rather than name (a `skopeo copy … dir:` folder names
them by digest): every file that starts as a safetensors file does (an 8-byte little-endian
header length, then `{`).
Shards are read in name order; each tensor is materialised (copied into a numpy array), so every
byte of the files is read. Prints the tensor count and bytes.
"""
import os
import sys

from safetensors import safe_open

root = sys.argv[1]
blobs = sys.argv[2:] == ["--blobs"]


def is_safetensors(path):
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:] == b"{" and int.from_bytes(head[:8], "little") < os.path.getsize(path)


files = sorted(
    os.path.join(d, f)
    for d, _, names in os.walk(root)
    if ".model-loader" not in d
    for f in names
    if (is_safetensors(os.path.join(d, f)) if blobs else f.endswith(".safetensors"))
)
tensors = size = 0
for path in files:
    with safe_open(path, framework="numpy") as s:
        for key in s.keys():
            t = s.get_tensor(key)
            tensors += 1
            size += t.nbytes
print(f"{len(files)} files, {tensors} tensors, {size} bytes")
