#!/usr/bin/env bash
# Measures model-loader against its peers on this machine and writes the tables of
# BENCHMARKS.md. Peers run alternately (A B A B …) on the same data, DEST dropped between runs;
# medians, min–max, peak RSS (/usr/bin/time) and client CPU per GiB are reported.
#
#   ./scripts/bench.sh [--smoke] [--runs N] [hf]
#
#   hf   model-loader vs `hf download` (huggingface_hub) from the fake Hub, whose LFS files
#        redirect to nginx (a fast static CDN with Range support)
#
# --smoke: tiny data, one run, results to target/bench/BENCHMARKS.smoke.md (scripts/test.sh
# runs it so the benchmark cannot rot).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
cd "$ROOT"

SMOKE=0; RUNS=5; SECTIONS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; RUNS=1 ;;
    --runs) RUNS=$2; shift ;;
    *) SECTIONS+=("$1") ;;
  esac
  shift
done
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(hf)

BENCH_DIR="$ROOT/target/bench"
OUT_MD="$ROOT/BENCHMARKS.md"
[ "$SMOKE" = 1 ] && OUT_MD="$BENCH_DIR/BENCHMARKS.smoke.md"
mkdir -p "$BENCH_DIR"
ROWS="$BENCH_DIR/rows.tsv"
printf 'section\ttool\tsettings\trun\twall_s\tuser_s\tsys_s\tmaxrss_kb\tbytes\tfiles\n' > "$ROWS"

if [ "$SMOKE" = 1 ]; then cargo build --locked; BIN="$ROOT/target/debug/model-loader"
else cargo build --release --locked; BIN="$ROOT/target/release/model-loader"; fi
install_python_tools

ensure_nginx() {
  command -v nginx >/dev/null && return 0
  log "installing nginx-light (Debian) for the benchmark CDN"
  if [ "$(id -u)" = 0 ]; then apt-get install -y -q nginx-light >/dev/null
  else sudo apt-get install -y -q nginx-light >/dev/null; fi
}

# start_nginx ROOT: serves ROOT on a free loopback port; sets NGINX_URL.
start_nginx() {
  local root=$1 port; port=$(free_port)
  mkdir -p "$RUN_DIR/nginx"
  cat > "$RUN_DIR/nginx/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $RUN_DIR/nginx/nginx.pid;
error_log $RUN_DIR/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $RUN_DIR/nginx;
  proxy_temp_path $RUN_DIR/nginx;
  fastcgi_temp_path $RUN_DIR/nginx;
  uwsgi_temp_path $RUN_DIR/nginx;
  scgi_temp_path $RUN_DIR/nginx;
  server { listen 127.0.0.1:$port; root $root; location / { } }
}
CONF
  nginx -c "$RUN_DIR/nginx/nginx.conf" -e "$RUN_DIR/nginx/error.log" &
  PIDS+=($!)
  NGINX_URL="http://127.0.0.1:$port"
  for _ in $(seq 1 50); do curl -s -o /dev/null "$NGINX_URL/" && break; sleep 0.1; done
}

# measure SECTION TOOL SETTINGS RUN BYTES FILES -- command...
measure() {
  local section=$1 tool=$2 settings=$3 run=$4 bytes=$5 files=$6; shift 7
  local t="$BENCH_DIR/time.txt"
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >"$BENCH_DIR/last.log" 2>&1 || {
    log "$tool failed:"; tail -20 "$BENCH_DIR/last.log" >&2; return 1; }
  read -r wall user sys rss < "$t"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$tool" "$settings" "$run" \
    "$wall" "$user" "$sys" "$rss" "$bytes" "$files" >> "$ROWS"
  log "$section run $run: $tool ${wall}s"
}

bench_hf() {
  ensure_nginx
  local model="$BENCH_DIR/hf-model" cdn="$BENCH_DIR/hf-cdn" shard_mib=512 shards=2
  [ "$SMOKE" = 1 ] && shard_mib=4
  if [ ! -f "$model/.complete-$shard_mib" ]; then
    log "generating a model: $shards × $shard_mib MiB shards + config files"
    rm -rf "$model" "$cdn"; mkdir -p "$model" "$cdn"
    for i in $(seq 1 $shards); do
      head -c $((shard_mib << 20)) /dev/urandom > "$model/model-0000$i-of-0000$shards.safetensors"
    done
    echo '{"model_type": "llama"}' > "$model/config.json"
    head -c 20000 /dev/urandom | base64 > "$model/tokenizer.json"
    echo '{}' > "$model/generation_config.json"
    touch "$model/.complete-$shard_mib"
  fi
  rm -rf "$cdn"; mkdir -p "$cdn"
  for f in "$model"/*.safetensors; do ln -sf "$f" "$cdn/$(sha256sum "$f" | cut -d' ' -f1)"; done
  start_nginx "$cdn"
  local hub cdnport; hub=$(free_port); cdnport=$(free_port)
  "$VENV/bin/python" scripts/support/fake_hub.py "$hub" "$cdnport" "model=$model" "$NGINX_URL" \
    >"$RUN_DIR/fake-hub-bench.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$hub/_log" fake-hub-bench
  # The fake hashes the shards on first use; do that before anything is timed.
  curl -sf -o /dev/null "http://127.0.0.1:$hub/_truth/model/bench/model@main"
  export HF_ENDPOINT="http://127.0.0.1:$hub" HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1
  local bytes files dest="$BENCH_DIR/hf-dest"
  bytes=$(find "$model" -type f ! -name '.complete-*' -printf '%s\n' | awk '{s+=$1} END {print s}')
  files=$(find "$model" -type f ! -name '.complete-*' | wc -l)
  for run in $(seq 1 "$RUNS"); do
    # Flush the previous run's dirty pages so no run pays for another's writeback.
    rm -rf "$dest"; sync
    measure hf model-loader "defaults (16 requests, 64 MiB chunks)" "$run" "$bytes" "$files" -- \
      "$BIN" --progress none hf://bench/model "$dest"
    (cd "$dest" && for f in *.safetensors; do cmp -s "$f" "$model/$f" || { log "MISMATCH $f"; exit 1; }; done)
    rm -rf "$dest" "$BENCH_DIR/hf-home"; sync
    measure hf "hf download" "huggingface_hub $HF_HUB_VERSION, --local-dir, 8 workers" "$run" "$bytes" "$files" -- \
      env HF_HOME="$BENCH_DIR/hf-home" "$VENV/bin/hf" download bench/model --local-dir "$dest"
  done
  rm -rf "$dest"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" hf "$OUT_MD" \
    "### hf:// — $shards × $shard_mib MiB LFS shards + 3 small files from the fake Hub, CDN = nginx on loopback (median of $RUNS, $(date -u +%F))"
}

for s in "${SECTIONS[@]}"; do
  case "$s" in
    hf) bench_hf ;;
    *) log "unknown section $s"; exit 2 ;;
  esac
done
log "results in $OUT_MD"
