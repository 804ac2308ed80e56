#!/usr/bin/env bash
# Builds model-loader, starts a local S3-compatible server (moto) seeded with a small generated
# model, and downloads it — offline, with nothing configured but the endpoint and a key.
# Then shows that a rerun fetches nothing. Stops the server on exit.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

PROFILE="${MODEL_LOADER_DEMO_PROFILE:-release}"
log "building model-loader ($PROFILE)"
if [ "$PROFILE" = release ]; then cargo build --release --locked; else cargo build --locked; fi
BIN="$ROOT/target/$PROFILE/model-loader"

install_python_tools
if [ -n "${MODEL_LOADER_DEMO_ENDPOINT:-}" ]; then
  ENDPOINT="$MODEL_LOADER_DEMO_ENDPOINT"
else
  start_moto demo-s3
  ENDPOINT="$MOTO_URL"
fi

DEMO_DIR="$ROOT/target/demo"
rm -rf "$DEMO_DIR"; mkdir -p "$DEMO_DIR"
log "seeding s3://demo-models/tiny-llama on $ENDPOINT"
"$VENV/bin/python" scripts/support/seed_model.py "$ENDPOINT" demo-models tiny-llama 24 > "$DEMO_DIR/SHA256SUMS"

export AWS_ENDPOINT_URL="$ENDPOINT" AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo-secret
log "model-loader s3://demo-models/tiny-llama $DEMO_DIR/tiny-llama"
"$BIN" s3://demo-models/tiny-llama "$DEMO_DIR/tiny-llama"

log "checking every file's sha256"
(cd "$DEMO_DIR/tiny-llama" && sha256sum --check --quiet "$DEMO_DIR/SHA256SUMS")
ls -la "$DEMO_DIR/tiny-llama"

log "rerun: nothing changed, nothing fetched"
"$BIN" s3://demo-models/tiny-llama "$DEMO_DIR/tiny-llama"
log "demo done: the model is in $DEMO_DIR/tiny-llama"
