"""Uploads a small generated model (config, tokenizer, safetensors shards) to an S3 endpoint,
and prints its files' sha256 sums (sha256sum format, paths relative to the prefix)."""
import hashlib
import json
import os
import sys

import boto3

endpoint, bucket, prefix, mib = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/") + "/", int(sys.argv[4])
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="demo", aws_secret_access_key="demo-secret")
try:
    s3.create_bucket(Bucket=bucket)
except s3.exceptions.BucketAlreadyOwnedByYou:
    pass
files = {
    "config.json": json.dumps({"model_type": "llama", "hidden_size": 256, "num_hidden_layers": 2}).encode(),
    "generation_config.json": b'{"do_sample": true, "temperature": 0.7}',
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {f"t{i}": i for i in range(2000)}}}).encode(),
    "tokenizer_config.json": b"{}",
}
half = mib * 1024 * 1024 // 2
rng = hashlib.sha256(b"model-loader demo")
for shard in (1, 2):
    # Incompressible, deterministic bytes: sha256 in counter mode.
    out, i = bytearray(), 0
    while len(out) < half + shard * 4099:
        out += hashlib.sha256(b"%d-%d" % (shard, i)).digest() * 64
        i += 1
    files[f"model-0000{shard}-of-00002.safetensors"] = bytes(out[: half + shard * 4099])
files["model.safetensors.index.json"] = json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}).encode()
for name, body in files.items():
    s3.put_object(Bucket=bucket, Key=prefix + name, Body=body)
for name, body in sorted(files.items()):
    print(f"{hashlib.sha256(body).hexdigest()}  {name}")
