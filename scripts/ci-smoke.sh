#!/usr/bin/env bash
# CI smoke test for model-loader against any S3-compatible server: MinIO started from
# docker/compose.minio.yaml in your CI, or moto here (scripts/test.sh runs it).
#
#   MODEL_LOADER_SMOKE_ENDPOINT=http://127.0.0.1:9000 AWS_ACCESS_KEY_ID=minioadmin \
#     AWS_SECRET_ACCESS_KEY=minioadmin ./scripts/ci-smoke.sh
#
# It creates a bucket, uploads a generated model with model-loader (`load DIR s3://…`), loads it
# back into a fresh directory, verifies every file's sha256, checks that a rerun fetches nothing
# and that `--check` agrees. Needs bash, curl (7.75+ for --aws-sigv4) and sha256sum.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
: "${MODEL_LOADER_SMOKE_ENDPOINT:?set it to the S3 endpoint, e.g. http://127.0.0.1:9000}"
export AWS_ACCESS_KEY_ID="${AWS_ACCESS_KEY_ID:-minioadmin}"
export AWS_SECRET_ACCESS_KEY="${AWS_SECRET_ACCESS_KEY:-minioadmin}"
export AWS_REGION="${AWS_REGION:-us-east-1}"
export AWS_ENDPOINT_URL="$MODEL_LOADER_SMOKE_ENDPOINT"
export AWS_EC2_METADATA_DISABLED=true
BIN="${MODEL_LOADER_BIN:-$ROOT/target/release/model-loader}"
if [ ! -x "$BIN" ]; then (cd "$ROOT" && cargo build --release --locked); fi
BUCKET="${MODEL_LOADER_SMOKE_BUCKET:-smoke-$(date +%s)-$RANDOM}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
say() { printf 'smoke: %s\n' "$*" >&2; }

say "creating bucket $BUCKET on $MODEL_LOADER_SMOKE_ENDPOINT"
curl -sSf -X PUT --aws-sigv4 "aws:amz:$AWS_REGION:s3" --user "$AWS_ACCESS_KEY_ID:$AWS_SECRET_ACCESS_KEY" \
  -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$MODEL_LOADER_SMOKE_ENDPOINT/$BUCKET" >/dev/null

say "generating a model"
mkdir -p "$WORK/model/tokenizer"
head -c $((24 << 20)) /dev/urandom > "$WORK/model/model-00001-of-00002.safetensors"
head -c $((3 << 20)) /dev/urandom > "$WORK/model/model-00002-of-00002.safetensors"
echo '{"model_type": "llama", "hidden_size": 256}' > "$WORK/model/config.json"
head -c 50000 /dev/urandom | base64 > "$WORK/model/tokenizer/tokenizer.json"
: > "$WORK/model/empty.txt"
(cd "$WORK/model" && find . -type f -print0 | sort -z | xargs -0 sha256sum) > "$WORK/SHA256SUMS"

say "uploading it with model-loader"
"$BIN" --progress log --chunk-size 8MiB "$WORK/model" "s3://$BUCKET/models/tiny"

say "loading it back"
"$BIN" --progress log --chunk-size 8MiB "s3://$BUCKET/models/tiny" "$WORK/loaded"
(cd "$WORK/loaded" && sha256sum --check --quiet "$WORK/SHA256SUMS")
test -f "$WORK/loaded/.model-loader/manifest.json"

say "a rerun fetches nothing"
"$BIN" --progress log "s3://$BUCKET/models/tiny" "$WORK/loaded" 2>&1 | tee "$WORK/rerun.log" >&2
grep -q "done: fetched 0 files" "$WORK/rerun.log"

say "--check agrees"
"$BIN" --check "s3://$BUCKET/models/tiny" "$WORK/loaded"
rm "$WORK/loaded/config.json"
if "$BIN" --check "s3://$BUCKET/models/tiny" "$WORK/loaded"; then say "--check missed a deleted file"; exit 1; fi
say "ok"
