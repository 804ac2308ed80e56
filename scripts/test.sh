#!/usr/bin/env bash
# Installs (pinned, into ignored folders) and starts every server the tests need on loopback,
# runs the whole suite, and stops what it started — also on failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

install_python_tools

start_moto moto-s3
export MODEL_LOADER_TEST_S3_ENDPOINT="$MOTO_URL"

start_moto moto-s3-auth INITIAL_NO_AUTH_ACTION_COUNT=3
export MODEL_LOADER_TEST_S3_AUTH_ENDPOINT="$MOTO_URL"
export MODEL_LOADER_TEST_S3_AUTH_BUCKET=auth-bucket
read -r MODEL_LOADER_TEST_S3_AUTH_KEY_ID MODEL_LOADER_TEST_S3_AUTH_SECRET < <(
  "$VENV/bin/python" scripts/support/seed_auth.py "$MOTO_URL" "$MODEL_LOADER_TEST_S3_AUTH_BUCKET")
export MODEL_LOADER_TEST_S3_AUTH_KEY_ID MODEL_LOADER_TEST_S3_AUTH_SECRET

log "cargo test"
cargo test --locked --all-targets -- "$@"

log "demo smoke run"
MODEL_LOADER_DEMO_PROFILE=debug MODEL_LOADER_DEMO_ENDPOINT="$MODEL_LOADER_TEST_S3_ENDPOINT" ./scripts/demo.sh
log "all tests passed"
