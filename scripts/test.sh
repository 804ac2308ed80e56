#!/usr/bin/env bash
# Installs (pinned, into ignored folders) and starts every server the tests need on loopback,
# runs the whole suite, and stops what it started — also on failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

log "cargo fmt --check"
cargo fmt --check
log "cargo clippy --all-targets --locked -- -D warnings"
cargo clippy --all-targets --locked -- -D warnings
install_cargo_deny
log "cargo deny check licenses bans sources (advisories need a database download; see CONTRIBUTING.md)"
"$CARGO_DENY" check --hide-inclusion-graph licenses bans sources

install_python_tools

start_moto moto-s3
export MODEL_LOADER_TEST_S3_ENDPOINT="$MOTO_URL"

start_moto moto-s3-auth INITIAL_NO_AUTH_ACTION_COUNT=3
export MODEL_LOADER_TEST_S3_AUTH_ENDPOINT="$MOTO_URL"
export MODEL_LOADER_TEST_S3_AUTH_BUCKET=auth-bucket
read -r MODEL_LOADER_TEST_S3_AUTH_KEY_ID MODEL_LOADER_TEST_S3_AUTH_SECRET < <(
  "$VENV/bin/python" scripts/support/seed_auth.py "$MOTO_URL" "$MODEL_LOADER_TEST_S3_AUTH_BUCKET")
export MODEL_LOADER_TEST_S3_AUTH_KEY_ID MODEL_LOADER_TEST_S3_AUTH_SECRET

install_s3s_fs
rm -rf "$RUN_DIR/s3s-root" && mkdir -p "$RUN_DIR/s3s-root/sigv4"
start_s3s_fs sigv4-test-key "sigv4 test secret+/=" "$RUN_DIR/s3s-root"
export MODEL_LOADER_TEST_S3S_ENDPOINT="$S3S_URL" MODEL_LOADER_TEST_S3S_BUCKET=sigv4
export MODEL_LOADER_TEST_S3S_KEY_ID=sigv4-test-key MODEL_LOADER_TEST_S3S_SECRET="sigv4 test secret+/="

start_fake_gcs
export MODEL_LOADER_TEST_GCS_ENDPOINT="$FAKE_GCS_URL"

start_registry
export MODEL_LOADER_TEST_REGISTRY="$REGISTRY_HOST"

start_fake_hub
export MODEL_LOADER_TEST_HF_ENDPOINT="$FAKE_HUB_URL"
log "checking the fake Hub against huggingface_hub $HF_HUB_VERSION"
rm -rf "$RUN_DIR/hf-check"
HF_ENDPOINT="$FAKE_HUB_URL" HF_HOME="$RUN_DIR/hf-home" HF_HUB_DISABLE_TELEMETRY=1 \
  HF_HUB_DISABLE_PROGRESS_BARS=1 "$VENV/bin/python" scripts/support/check_fake_hub.py "$RUN_DIR/hf-check"

export MODEL_LOADER_TEST_PYTHON="$VENV/bin/python"
ensure_nginx
export MODEL_LOADER_TEST_NGINX="$(command -v nginx)"
# The TLS front's certificates (tests/it/support/nginx.rs).
command -v openssl >/dev/null || { log "installing openssl (Debian)"; apt_install openssl; }
# A FUSE DEST for the write-mode tests (tests/it/write_mode.rs).
command -v bindfs >/dev/null || { log "installing bindfs (Debian)"; apt_install bindfs; }

log "cargo test"
cargo test --locked --all-targets -- "$@"
if [ $# -eq 0 ]; then
  # Small test models fit in memory, so `--write-mode auto` writes them through the page cache:
  # the crash-safety, fault and verification scenarios again with O_DIRECT writes.
  log "cargo test: safety, faults and verification with --write-mode direct"
  # On a tmpfs TMPDIR O_DIRECT would fall back to buffered writes: the tests' DESTs go to disk.
  direct_tmp="${TMPDIR:-/tmp}"
  if [ "$(stat -f -c %T "$direct_tmp")" = tmpfs ]; then direct_tmp="$ROOT/target/test-tmp"; mkdir -p "$direct_tmp"; fi
  TMPDIR="$direct_tmp" MODEL_LOADER_TEST_WRITE_MODE=direct cargo test --locked --test it -- \
    adversity:: faults:: safety:: verify:: promises:: field::
fi

log "CI smoke script (upload, load back, verify, rerun, --check) against moto"
MODEL_LOADER_SMOKE_ENDPOINT="$MODEL_LOADER_TEST_S3_ENDPOINT" AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
  MODEL_LOADER_BIN="$ROOT/target/debug/model-loader" ./scripts/ci-smoke.sh

log "image contents: the Dockerfile's runtime layouts, chrooted read-only as uid 65532"
./scripts/support/image_rootfs.sh "$ROOT/target/debug/model-loader" "$MODEL_LOADER_TEST_S3_ENDPOINT"

log "examples parse and name only existing options"
"$VENV/bin/python" scripts/support/check_examples.py "$ROOT/target/debug/model-loader" examples/*.yaml

log "benchmark smoke run"
./scripts/bench.sh --smoke

log "demo smoke run"
MODEL_LOADER_DEMO_PROFILE=debug MODEL_LOADER_DEMO_ENDPOINT="$MODEL_LOADER_TEST_S3_ENDPOINT" ./scripts/demo.sh
log "all tests passed"
