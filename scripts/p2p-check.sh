#!/usr/bin/env bash
# Opt-in: model-loader through a real Dragonfly dfdaemon (dragonfly-client from crates.io).
#
#   ./scripts/p2p-check.sh
#
# Builds dfdaemon once into .tools/dragonfly (45–55 minutes on 2 cores; needs Debian's
# protobuf-compiler, clang and libclang-dev, installed here), then on loopback:
#   origin: s3s-fs (S3, checks every SigV4 signature), fake-gcs-server, and the fake Hub, whose
#           CDN is nginx; a recording nginx in front of them logs every request and its bytes;
#   a stand-in scheduler (scripts/support/dragonfly_scheduler.py: gRPC health, AnnounceHost,
#           and "back to source" for every peer, as a real scheduler tells a task's first peer);
#   dfdaemon with its HTTP proxy.
# For s3://, gs:// and hf://, loads the model into DEST 1 and DEST 2 through the proxy, checking:
#   - every file's sha256 in both DESTs;
#   - every request the daemon took over carries our headers (filtered signature parameters,
#     the task identity from the content), and no HF token or Authorization header reached it;
#   - the origin sent the model's object bytes about once: the second DEST came from the
#     daemon's cache, although its presigned URLs differ from the first run's.
# Not in scripts/test.sh because of the build time. Exits non-zero on any failure.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

DRAGONFLY_VERSION="1.5.10"
DRAGONFLY_API_VERSION="2.3.8"
GRPCIO_VERSION="1.85.3"
GRPC_HEALTH_VERSION="1.85.1"
PROTOBUF_VERSION="7.36.2"
DF_ROOT="$ROOT/.tools/dragonfly"
DFDAEMON="$DF_ROOT/bin/dfdaemon"
DF_VENV="$ROOT/.tools/dragonfly-venv"
CHECK_DIR="$ROOT/target/p2p-check"
RUN_DIR="$CHECK_DIR/servers"

install_dragonfly() {
  if [ -x "$DFDAEMON" ] && [ "$(cat "$DF_ROOT/.installed" 2>/dev/null)" = "$DRAGONFLY_VERSION" ]; then return 0; fi
  log "installing protobuf-compiler, clang, libclang-dev (Debian) for the dragonfly-client build"
  apt_install protobuf-compiler clang libclang-dev
  log "building dragonfly-client $DRAGONFLY_VERSION from crates.io into .tools/dragonfly (45–55 minutes on 2 cores, once)"
  cargo install dragonfly-client --version "$DRAGONFLY_VERSION" --locked --root "$DF_ROOT" \
    --target-dir "$ROOT/target/dragonfly-build" >/dev/null
  echo "$DRAGONFLY_VERSION" > "$DF_ROOT/.installed"
}

install_scheduler_stand_in() {
  local want="dragonfly-api==$DRAGONFLY_API_VERSION grpcio==$GRPCIO_VERSION grpcio-health-checking==$GRPC_HEALTH_VERSION protobuf==$PROTOBUF_VERSION"
  if [ "$(cat "$DF_VENV/.installed" 2>/dev/null)" != "$want" ]; then
    log "installing $want into $DF_VENV"
    python3 -m venv "$DF_VENV"
    # shellcheck disable=SC2086
    "$DF_VENV/bin/pip" install -q --disable-pip-version-check $want
    echo "$want" > "$DF_VENV/.installed"
  fi
}

install_dragonfly
install_scheduler_stand_in
install_python_tools
install_s3s_fs
ensure_nginx
cargo build --locked
BIN="$ROOT/target/debug/model-loader"

rm -rf "$CHECK_DIR"; mkdir -p "$RUN_DIR"

# The model: two shards of 40 MiB (one request each from S3 and GCS, ten 4 MiB ranges each from
# the Hub, whose sha256 is hashed in order) and two small files.
MODEL="$CHECK_DIR/model"; mkdir -p "$MODEL"
head -c $((40 << 20)) /dev/urandom > "$MODEL/model-00001-of-00002.safetensors"
head -c $((40 << 20 | 12345)) /dev/urandom > "$MODEL/model-00002-of-00002.safetensors"
echo '{"model_type": "llama"}' > "$MODEL/config.json"
head -c 30000 /dev/urandom | base64 > "$MODEL/tokenizer.json"
(cd "$MODEL" && sha256sum -- * > "$CHECK_DIR/SHA256SUMS")
MODEL_BYTES=$(find "$MODEL" -type f -printf '%s\n' | awk '{s+=$1} END {print s}')

# Origin: s3s-fs for S3, fake-gcs-server for GCS, the model's LFS files by sha256 for the Hub's CDN.
KEY=p2p-check-key SECRET="p2p check secret"
start_s3s_fs "$KEY" "$SECRET" "$CHECK_DIR/s3s-root"
start_fake_gcs
mkdir -p "$CHECK_DIR/s3s-root/models"
CDN_ROOT="$CHECK_DIR/cdn"; mkdir -p "$CDN_ROOT"
for f in "$MODEL"/*.safetensors; do ln -s "$f" "$CDN_ROOT/$(sha256sum "$f" | cut -d' ' -f1)"; done

# The recording origin front: one nginx, one port each for S3 (proxied to s3s-fs, Host kept for
# the signatures), GCS and the CDN; every request is logged with the bytes sent.
S3_PORT=$(free_port) CDN_PORT=$(free_port) GCS_PORT=$(free_port)
cat > "$RUN_DIR/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN_DIR/nginx.pid;
error_log $RUN_DIR/nginx-error.log;
events { worker_connections 1024; }
http {
  log_format bytes '\$server_port \$request_method \$uri \$status \$body_bytes_sent "\$http_range"';
  access_log $RUN_DIR/origin.log bytes;
  client_body_temp_path $RUN_DIR;
  proxy_temp_path $RUN_DIR;
  fastcgi_temp_path $RUN_DIR;
  uwsgi_temp_path $RUN_DIR;
  scgi_temp_path $RUN_DIR;
  client_max_body_size 0;
  server {
    listen 127.0.0.1:$S3_PORT;
    location / {
      proxy_pass $S3S_URL;
      proxy_set_header Host \$http_host;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }
  server {
    listen 127.0.0.1:$GCS_PORT;
    location / {
      proxy_pass $FAKE_GCS_URL;
      proxy_set_header Host \$http_host;
      proxy_http_version 1.1;
      proxy_request_buffering off;
      proxy_buffering off;
    }
  }
  server { listen 127.0.0.1:$CDN_PORT; root $CDN_ROOT; location / { } }
}
CONF
nginx -c "$RUN_DIR/nginx.conf" -e "$RUN_DIR/nginx-error.log" &
PIDS+=($!)
ORIGIN_S3="http://127.0.0.1:$S3_PORT" ORIGIN_GCS="http://127.0.0.1:$GCS_PORT"
wait_http "http://127.0.0.1:$CDN_PORT/" nginx-error

HUB_PORT=$(free_port)
"$VENV/bin/python" scripts/support/fake_hub.py "$HUB_PORT" "$(free_port)" "model=$MODEL" \
  "http://127.0.0.1:$CDN_PORT" > "$RUN_DIR/fake-hub.log" 2>&1 &
PIDS+=($!)
wait_http "http://127.0.0.1:$HUB_PORT/_log" fake-hub

# The stand-in scheduler and dfdaemon.
SCHED_PORT=$(free_port)
"$DF_VENV/bin/python" scripts/support/dragonfly_scheduler.py "$SCHED_PORT" "$RUN_DIR/scheduler.jsonl" \
  > "$RUN_DIR/scheduler.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do grep -q started "$RUN_DIR/scheduler.jsonl" 2>/dev/null && break; sleep 0.1; done

PROXY_PORT=$(free_port)
DF_DIR="$CHECK_DIR/dfdaemon"; mkdir -p "$DF_DIR/storage" "$DF_DIR/cache" "$DF_DIR/plugins" "$DF_DIR/log"
cat > "$DF_DIR/dynconfig.yaml" <<CONF
scheduler:
  addrs: ["127.0.0.1:$SCHED_PORT"]
CONF
cat > "$DF_DIR/dfdaemon.yaml" <<CONF
host:
  hostname: p2p-check
  ip: 127.0.0.1
server:
  pluginDir: $DF_DIR/plugins
  cacheDir: $DF_DIR/cache
download:
  server:
    socketPath: $DF_DIR/dfdaemon.sock
upload:
  server:
    ip: 127.0.0.1
    port: $(free_port)
storage:
  dir: $DF_DIR/storage
  server:
    ip: 127.0.0.1
    tcpPort: $(free_port)
    quicPort: $(free_port)
proxy:
  server:
    ip: 127.0.0.1
    port: $PROXY_PORT
health:
  server:
    ip: 127.0.0.1
    port: $(free_port)
metrics:
  server:
    ip: 127.0.0.1
    port: $(free_port)
gc:
  policy:
    # Never evict during the check, however full the machine's disk is.
    diskHighThresholdPercent: 99
    diskLowThresholdPercent: 98
stats:
  server:
    ip: 127.0.0.1
    port: $(free_port)
CONF
"$DFDAEMON" -c "$DF_DIR/dfdaemon.yaml" --dynconfig "$DF_DIR/dynconfig.yaml" --log-dir "$DF_DIR/log" \
  --console > "$RUN_DIR/dfdaemon.log" 2>&1 &
PIDS+=($!)
# A TCP check: an HTTP request to the proxy itself would be proxied (to Docker Hub, by default).
for i in $(seq 1 300); do
  (exec 3<>"/dev/tcp/127.0.0.1/$PROXY_PORT") 2>/dev/null && break
  if [ "$i" = 300 ]; then log "dfdaemon did not start; its log:"; tail -40 "$RUN_DIR/dfdaemon.log" >&2; exit 1; fi
  sleep 0.2
done
log "dfdaemon $DRAGONFLY_VERSION proxy on 127.0.0.1:$PROXY_PORT, scheduler stand-in on $SCHED_PORT"

fail() { log "FAILED: $*"; exit 1; }

# origin_bytes PORT: bytes the origin sent for object GETs on that port so far.
origin_bytes() {
  awk -v p="$1" '$1 == p && $2 == "GET" && $4 ~ /^20/ && $3 !~ /^\/models\/?$/ && $3 !~ /\/o$/ { s += $5 } END { print s + 0 }' "$RUN_DIR/origin.log"
}

# load NAME SRC DEST [ENV=VALUE...]: one load through the proxy; checks files and the p2p line.
load() {
  local name=$1 src=$2 dest=$3; shift 3
  env "$@" "$BIN" --progress log --p2p-proxy "http://127.0.0.1:$PROXY_PORT" "$src" "$dest" \
    > "$CHECK_DIR/$name.log" 2>&1 || { tail -30 "$CHECK_DIR/$name.log" >&2; fail "$name exited non-zero"; }
  (cd "$dest" && sha256sum --check --quiet "$CHECK_DIR/SHA256SUMS") || fail "$name: files differ"
  grep -q "p2p: [1-9][0-9]* requests\? through" "$CHECK_DIR/$name.log" \
    || { grep p2p "$CHECK_DIR/$name.log" >&2 || true; fail "$name: no request went through the proxy"; }
  if ! grep -q "p2p: .*, 0 direct" "$CHECK_DIR/$name.log"; then
    grep p2p "$CHECK_DIR/$name.log" >&2; fail "$name: some requests went direct"
  fi
  log "$name: $(grep -o 'p2p: [0-9].*' "$CHECK_DIR/$name.log" | tail -1)"
}

# two_nodes NAME SRC PORT BYTES [ENV=VALUE...]: loads SRC into two DESTs through the daemon;
# the origin on PORT must send BYTES about once for node 1 and (almost) nothing for node 2.
two_nodes() {
  local name=$1 src=$2 port=$3 bytes=$4 before first second; shift 4
  before=$(origin_bytes "$port")
  load "$name-node-1" "$src" "$CHECK_DIR/$name-dest-1" "$@"
  first=$(( $(origin_bytes "$port") - before ))
  sleep 1  # a new second: node 2's signed URLs differ from node 1's
  load "$name-node-2" "$src" "$CHECK_DIR/$name-dest-2" "$@"
  second=$(( $(origin_bytes "$port") - before - first ))
  log "$name: the origin sent $first bytes for node 1 and $second for node 2; the objects are $bytes"
  [ "$first" -ge "$bytes" ] || fail "$name: node 1's bytes did not all come from the origin?"
  [ "$first" -le $((bytes * 11 / 10)) ] || fail "$name: the origin sent more than 1.1× the objects for node 1"
  [ "$second" -le $((bytes / 100)) ] || fail "$name: node 2 was not served from the daemon's cache"
}

# --- s3:// ---------------------------------------------------------------------------------
S3ENV=(AWS_ENDPOINT_URL="$ORIGIN_S3" AWS_ACCESS_KEY_ID="$KEY" AWS_SECRET_ACCESS_KEY="$SECRET" AWS_REGION=us-east-1)
env "${S3ENV[@]}" "$BIN" --progress none "$MODEL" s3://models/p2p-model > "$CHECK_DIR/upload.log" 2>&1 \
  || { cat "$CHECK_DIR/upload.log" >&2; fail "upload to s3s-fs"; }
two_nodes s3 s3://models/p2p-model "$S3_PORT" "$MODEL_BYTES" "${S3ENV[@]}"

# --- gs:// ---------------------------------------------------------------------------------
# fake-gcs-server behind the recording front; an emulator means anonymous (no bearer), so this
# shows the media reads as tasks pinned to the generation, not the bearer's replay.
GCSENV=(STORAGE_EMULATOR_HOST="$ORIGIN_GCS")
curl -sSf -X POST -H 'content-type: application/json' -d '{"name":"models"}' "$ORIGIN_GCS/storage/v1/b" >/dev/null \
  || fail "create the GCS bucket"
env "${GCSENV[@]}" "$BIN" --progress none "$MODEL" gs://models/p2p-model > "$CHECK_DIR/upload-gcs.log" 2>&1 \
  || { cat "$CHECK_DIR/upload-gcs.log" >&2; fail "upload to fake-gcs-server"; }
two_nodes gcs gs://models/p2p-model "$GCS_PORT" "$MODEL_BYTES" "${GCSENV[@]}"

# --- hf:// ---------------------------------------------------------------------------------
# The fake Hub's one valid token: it must never reach the daemon. Only the LFS files come from
# the CDN (the small files from the Hub API, direct).
HF_SECRET=hf_fake_token_0123456789
HFENV=(HF_ENDPOINT="http://127.0.0.1:$HUB_PORT" HF_TOKEN="$HF_SECRET")
LFS_BYTES=$(find "$MODEL" -name '*.safetensors' -printf '%s\n' | awk '{s+=$1} END {print s}')
two_nodes hf hf://bench/model "$CDN_PORT" "$LFS_BYTES" "${HFENV[@]}"

# --- ranged vs whole-object GETs through the daemon (measured and reported) ---------------
# One 256 MiB object per mode (separate tasks): 64 MiB ranges (the default) against one GET
# for the whole object (--chunk-size 4GiB). Node 1 is back to source, node 2 from the cache.
BIG="$CHECK_DIR/big"; mkdir -p "$BIG"
head -c $((256 << 20)) /dev/urandom > "$BIG/weights.bin"
BIG_BYTES=$((256 << 20))
for mode in ranged whole; do
  env "${S3ENV[@]}" "$BIN" --progress none "$BIG" "s3://models/big-$mode" > "$CHECK_DIR/upload-$mode.log" 2>&1 \
    || { cat "$CHECK_DIR/upload-$mode.log" >&2; fail "upload big-$mode"; }
done
REPORT=()
for mode in ranged whole; do
  chunk=64MiB; [ "$mode" = whole ] && chunk=4GiB
  times=()
  for node in 1 2; do
    before=$(origin_bytes "$S3_PORT")
    start=$(date +%s.%N)
    env "${S3ENV[@]}" MODEL_LOADER_CHUNK_SIZE=$chunk "$BIN" --progress log --p2p-proxy "http://127.0.0.1:$PROXY_PORT" \
      "s3://models/big-$mode" "$CHECK_DIR/big-$mode-$node" > "$CHECK_DIR/big-$mode-$node.log" 2>&1 \
      || { tail -20 "$CHECK_DIR/big-$mode-$node.log" >&2; fail "big-$mode node $node"; }
    times+=("$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN {printf "%.2f", e - s}')")
    cmp -s "$CHECK_DIR/big-$mode-$node/weights.bin" "$BIG/weights.bin" || fail "big-$mode node $node: bytes differ"
    sent=$(( $(origin_bytes "$S3_PORT") - before ))
    if [ "$node" = 1 ]; then
      [ "$sent" -le $((BIG_BYTES * 11 / 10)) ] || fail "big-$mode: the origin sent $sent bytes for a $BIG_BYTES-byte object"
    else
      [ "$sent" -le $((BIG_BYTES / 100)) ] || fail "big-$mode: node 2 was not served from the daemon's cache"
    fi
    requests=$(grep -o 'p2p: [0-9]* requests\? through' "$CHECK_DIR/big-$mode-$node.log" | awk '{print $2}')
    times[-1]="${times[-1]} s (requests: $requests, origin bytes: $sent)"
  done
  REPORT+=("$mode ($chunk): node 1 ${times[0]}; node 2 ${times[1]}")
done
printf '%s\n' "${REPORT[@]}" | tee "$CHECK_DIR/ranged-vs-whole.txt" | sed 's/^/==> /' >&2

# --- what the daemon was asked --------------------------------------------------------------
# dfdaemon logs every request it takes over for P2P, with its headers; the stand-in scheduler
# logs the tasks registered with it (ranges over 4 MiB; smaller ones skip the scheduler).
THROUGH=$(cat "$CHECK_DIR"/*-node-*.log "$CHECK_DIR"/big-*-[12].log | grep -o 'p2p: [0-9]* requests\? through' | awk '{s+=$2} END {print s}')
"$DF_VENV/bin/python" - "$RUN_DIR/dfdaemon.log" "$RUN_DIR/scheduler.jsonl" "$HF_SECRET" "$THROUGH" "$ORIGIN_S3" "$ORIGIN_GCS" <<'PY' || fail "what the daemon was asked"
import json, re, sys
log, sched, secret, through, origin_s3, origin_gcs = open(sys.argv[1]).read(), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], sys.argv[6]
assert secret not in log, "the HF token reached the daemon"
reqs = []
for line in log.splitlines():
    if "via dfdaemon by X-Dragonfly-Use-P2P header" not in line:
        continue
    uri = re.search(r"uri: (\S+), version", line).group(1)
    headers = dict(re.findall(r'"([a-z0-9-]+)": "([^"]*)"', line.split("headers: ", 1)[1]))
    reqs.append((uri, headers))
assert len(reqs) == through, f"the daemon took {len(reqs)} requests over for P2P; the loaders sent {through} through it"
filtered_needed = {"X-Amz-Signature", "X-Amz-Date", "X-Amz-Credential", "X-Goog-Signature", "Expires", "Signature", "Policy", "Key-Pair-Id"}
s3 = gcs = hub = 0
for uri, h in reqs:
    assert h.get("x-dragonfly-use-p2p") == "true", (uri, h)
    missing = filtered_needed - set(h.get("x-dragonfly-filtered-query-params", "").split(","))
    assert not missing, f"{uri}: signature parameters not filtered: {missing}"
    assert "authorization" not in h, f"{uri}: an Authorization header reached the daemon"
    if uri.startswith(origin_s3 + "/"):
        s3 += 1
        assert "X-Amz-SignedHeaders=host&" in uri and "X-Amz-Signature=" in uri, f"not presigned: {uri}"
        # s3s-fs lists no ETags, so there is no content identity; with one, it names the task.
        task = h.get("x-dragonfly-content-for-calculating-task-id")
        assert task is None or task.startswith("s3://models/"), task
    elif uri.startswith(origin_gcs + "/"):
        gcs += 1
        assert "alt=media" in uri and "generation=" in uri, f"not a media read pinned to a generation: {uri}"
        task = h.get("x-dragonfly-content-for-calculating-task-id", "")
        assert task.startswith("gs://models/p2p-model/") and "#" in task, (uri, task)
    else:
        hub += 1
        oid = uri.split("?")[0].rsplit("/", 1)[1]
        assert h.get("x-dragonfly-content-for-calculating-task-id") == f"hf-lfs:sha256:{oid}", (uri, h)
assert s3 and gcs and hub, f"{s3} S3, {gcs} GCS and {hub} Hub requests"
events = [json.loads(l) for l in open(sched)]
assert any(e["call"] == "AnnounceHost" for e in events), "the daemon never announced its host"
regs = [e for e in events if e["call"] == "RegisterPeer"]
assert regs, "no task was registered with the scheduler"
print(f"the daemon took {len(reqs)} requests over ({s3} S3, {gcs} GCS, {hub} Hub), all with the P2P headers; "
      f"{len(regs)} tasks went through the scheduler (back to source)")
PY
log "p2p-check passed: dfdaemon $DRAGONFLY_VERSION served both nodes; the origin sent each model once"
