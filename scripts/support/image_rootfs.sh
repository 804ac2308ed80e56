#!/usr/bin/env bash
# Checks what docker/Dockerfile's two runtime images must provide, without a container engine
# (none runs on these machines): assembles each target's root filesystem in a folder — the
# binary, the shared libraries it links, CA certificates, a passwd entry for uid 65532, and for
# the KubeAI target `load` on PATH plus bash, sleep and rm — then runs it the way Kubernetes
# would: chroot into it in a private mount namespace, root filesystem read-only, DEST on a
# tmpfs, as uid 65532, loading a model from the local S3 server.
#
#   scripts/support/image_rootfs.sh BIN S3_ENDPOINT
#
# What this does not cover: the Debian/distroless base layers themselves and `docker build`.
set -euo pipefail
BIN=$(readlink -f "$1"); ENDPOINT=$2
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
say() { printf 'image-check: %s\n' "$*" >&2; }
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1

BUCKET="image-check-$RANDOM$RANDOM"
curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user test:test -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
  "$ENDPOINT/$BUCKET" >/dev/null
head -c 3000000 /dev/urandom > "$WORK/weights.bin"
curl -sSf -X PUT --aws-sigv4 "aws:amz:us-east-1:s3" --user test:test -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' \
  -H 'Content-Type: application/octet-stream' --data-binary @"$WORK/weights.bin" "$ENDPOINT/$BUCKET/m/weights.bin" >/dev/null
want=$(sha256sum < "$WORK/weights.bin")

# add_exe ROOTFS PATH_IN_ROOTFS FILE: the executable and every library it links.
add_exe() {
  local root=$1 dest=$2 file=$3
  install -D -m 0755 "$file" "$root$dest"
  ldd "$file" | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] || install -D -m 0755 "$lib" "$root$lib"
  done
}

build_rootfs() { # ROOT TARGET
  local root=$1 target=$2
  mkdir -p "$root"/{dev,etc/ssl/certs,models,tmp,usr/local/bin}
  touch "$root/dev/null"   # a container runtime provides /dev; bind-mounted at run time
  add_exe "$root" /usr/local/bin/model-loader "$BIN"
  cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/"
  echo "loader:x:65532:65532::/nonexistent:/usr/sbin/nologin" > "$root/etc/passwd"
  echo "loader:x:65532:" > "$root/etc/group"
  if [ "$target" = kubeai ]; then
    ln -s model-loader "$root/usr/local/bin/load"
    for t in bash sleep rm; do add_exe "$root" "/usr/bin/$t" "$(command -v $t)"; done
    ln -s usr/bin "$root/bin"
  fi
}

run_in() { # ROOT COMMAND... : read-only root, tmpfs /models owned by 65532, as 65532
  local root=$1; shift
  env -i PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/nonexistent AWS_ACCESS_KEY_ID=test \
    AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 AWS_ENDPOINT_URL="$ENDPOINT" AWS_EC2_METADATA_DISABLED=true \
    unshare --mount sh -c '
      set -e
      root=$1; shift
      mount --bind "$root" "$root"
      mount --bind /dev/null "$root/dev/null"
      mount -o remount,bind,ro "$root"
      mount -t tmpfs -o size=64m,uid=65532,gid=65532 tmpfs "$root/models"
      mount -t tmpfs -o size=8m,mode=1777 tmpfs "$root/tmp"
      exec chroot --userspec=65532:65532 "$root" "$@"' sh "$root" "$@"
}

for target in kubeai minimal; do
  root="$WORK/$target"
  build_rootfs "$root" "$target"
  if [ "$target" = kubeai ]; then
    say "kubeai: ENTRYPOINT load SRC DEST, then the commands KubeAI execs"
    run_in "$root" bash -c "
      set -e
      load s3://$BUCKET/m /models/adapter
      test -f /models/adapter/.model-loader/manifest.json
      load --check s3://$BUCKET/m /models/adapter
      if touch /usr/local/bin/x 2>/dev/null; then echo root-is-writable; exit 1; fi
      sleep infinity & pid=\$!; kill \$pid
      rm -rf /models/adapter
      test ! -e /models/adapter
      echo kubeai-ok"
  else
    say "minimal: no shell, the loader alone"
    test ! -e "$root/bin/sh" && test ! -e "$root/usr/bin/bash"
    run_in "$root" /usr/local/bin/model-loader s3://"$BUCKET"/m /models/m
  fi
done
# The bytes themselves, checked outside the chroot (sha256sum is not in the minimal image).
root="$WORK/check"; build_rootfs "$root" minimal
got=$(AWS_ENDPOINT_URL=$ENDPOINT AWS_EC2_METADATA_DISABLED=true unshare --mount sh -c "
  mount -t tmpfs -o size=64m,uid=65532,gid=65532 tmpfs $root/models
  chroot --userspec=65532:65532 $root /usr/local/bin/model-loader --progress none s3://$BUCKET/m /models/m
  sha256sum < $root/models/m/weights.bin")
[ "$got" = "$want" ] || { say "sha256 mismatch: $got vs $want"; exit 1; }
say "ok: both runtime layouts load a model read-only as uid 65532"
