"""Writes real safetensors shards for the time-to-serve bench: random float16 tensors of 16 MiB
(a transformer's weight matrices are of that order), plus the config and index files an engine
reads first.

Usage: python gen_safetensors.py DIR SHARDS MIB_PER_SHARD
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

out, shards, mib = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(7)
per = max(1, min(mib, 16))  # MiB per tensor
weight_map = {}
for s in range(1, shards + 1):
    name = f"model-{s:05d}-of-{shards:05d}.safetensors"
    tensors = {}
    for t in range(mib // per):
        key = f"model.layers.{s}.{t}.weight"
        raw = rng.integers(0, 255, size=per << 20, dtype=np.uint8)
        tensors[key] = raw.view(np.float16).reshape(-1, 1024)
        weight_map[key] = name
    save_file(tensors, os.path.join(out, name), metadata={"format": "pt"})
with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {}, "weight_map": weight_map}, f)
with open(os.path.join(out, "config.json"), "w") as f:
    json.dump({"model_type": "llama", "torch_dtype": "float16"}, f)
