#!/usr/bin/env bash
# Make this machine able to build and run the Dockerfile with podman, for the
# image test (tests/deploy/test_image.py). Idempotent: a second run only checks.
#
#   tests/deploy/podman_setup.sh          # prints the CONTAINERS_CONF to export
#
# What it does, each step skipped when already done:
# 1. apt-get install podman buildah runc debootstrap (Debian's packages).
# 2. Writes a containers.conf: runc, not crun (crun refuses a mixed cgroup
#    v1/v2 host), the cgroupfs manager (no systemd in a CI container), and
#    default ulimits no higher than this host's hard limits (a sandbox cannot
#    raise them, and podman's defaults are higher).
# 3. Imports a stand-in for the Dockerfile's FROM image, under exactly its name,
#    because there is no image registry here: Debian bookworm from the apt
#    mirror (debootstrap minbase + python3, python3-venv, python3-pip) with
#    python and pip linked into /usr/local/bin as in the official image. It
#    differs from python:3.11.x-slim-bookworm in its Python: Debian's 3.11.2.
#    Build with --pull=never so that podman uses it instead of a registry.
# The stand-in and podman's layer cache stay in podman's storage between runs.
#
# Exit codes: 0 ready; 77 podman cannot run here (the reason on stderr).
set -euo pipefail
cd "$(dirname "$0")/../.."

state=${FTHARNESS_PODMAN_STATE:-/var/cache/ftharness-podman}
cannot() { echo "podman_setup: $*" >&2; exit 77; }

[ "$(id -u)" -eq 0 ] || cannot "not root: installing podman and running rootful containers needs root"

# One set-up at a time (pytest -n 2 runs the image tests in two processes).
mkdir -p "$state"
exec 9>"$state/setup.lock"
flock 9

missing=()
for tool in podman buildah runc debootstrap; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  command -v apt-get >/dev/null || cannot "no apt-get to install ${missing[*]}"
  echo "podman_setup: installing podman buildah runc debootstrap" >&2
  export DEBIAN_FRONTEND=noninteractive
  { apt-get update -q && apt-get install -y -q podman buildah runc debootstrap; } >&2 \
    || cannot "apt-get install podman buildah runc debootstrap failed"
fi

conf="$state/containers.conf"
nofile=$(ulimit -Hn)
nproc=$(ulimit -Hu)
pid_max=$(cat /proc/sys/kernel/pid_max)
[ "$nproc" = unlimited ] && nproc=$pid_max
[ "$nofile" = unlimited ] && nofile=1048576
[ "$nproc" -gt "$pid_max" ] && nproc=$pid_max
cat >"$conf.new" <<EOF
# Written by tests/deploy/podman_setup.sh.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
EOF
mv "$conf.new" "$conf"
export CONTAINERS_CONF=$conf

base=$(awk 'toupper($1) == "FROM" {print $2; exit}' Dockerfile)
[ -n "$base" ] || cannot "no FROM line in Dockerfile"
if ! podman image exists "$base"; then
  mirror=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  if [ -z "$mirror" ]; then
    mirror=$(awk '$1 == "deb" && $3 == "bookworm" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  fi
  mirror=${mirror:-http://deb.debian.org/debian}
  echo "podman_setup: building the stand-in for $base from $mirror (once per machine)" >&2
  root=$(mktemp -d "$state/rootfs.XXXXXX")
  trap 'rm -rf "$root"' EXIT
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip \
    bookworm "$root" "$mirror" >&2 || cannot "debootstrap of the stand-in base failed"
  ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
  ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | podman import \
    --change 'ENV LANG=C.UTF-8' --change 'CMD ["python3"]' - "$base" >&2
  # Short names resolve to docker.io/library/ too: tag both spellings.
  case "$base" in
    */*) ;;
    *) podman tag "$base" "docker.io/library/$base" ;;
  esac
fi

echo "$conf"
