#!/usr/bin/env bash
# Builds the Docker image shipyard's tests and examples run, entirely offline (no registry):
#   Debian bookworm (debootstrap minbase) + Open MPI + MPICH + openssh + libfabric1,
#   the Intel MPI runtime (impi-rt from PyPI) at /opt/intel/mpi,
#   and the smoke-test program tests/assets/mpi_hello.c built on this host for each MPI at
#   /opt/shipyard/bin/mpi-hello-{openmpi,mpich,impi}.
# The image holds no SSH keys of any kind: shipyard generates host and user keys per job.
#
# Cached by content: the image carries the label shipyard.build-hash; when it matches the hash of
# this script, the test program, the package list and the Intel MPI version, nothing is rebuilt.
#
# Usage: scripts/build-image.sh [--force]
# Environment: SHIPYARD_IMAGE (default shipyard/mpi:bookworm), SHIPYARD_IMPI_ROOT (/opt/intel/mpi),
#              DEBIAN_MIRROR (http://deb.debian.org/debian), SHIPYARD_BUILD_DIR (a temp dir).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
image=${SHIPYARD_IMAGE:-shipyard/mpi:bookworm}
impi=${SHIPYARD_IMPI_ROOT:-/opt/intel/mpi}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
packages=openmpi-bin,mpich,openssh-server,openssh-client,iproute2,libfabric1,procps,coreutils
hello_src=$repo/tests/assets/mpi_hello.c

log() { printf '[build-image] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in docker debootstrap mpicc.openmpi mpicc.mpich cc sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (run scripts/setup.sh first)"
done
[ -x "$impi/bin/mpiexec.hydra" ] || die "Intel MPI runtime not found at $impi (run scripts/setup.sh first)"
docker info >/dev/null 2>&1 || die "the Docker engine is not running (run scripts/setup.sh first)"

impi_version=$(ls -d "$impi"/lib/python3*/site-packages/impi_rt-*.dist-info 2>/dev/null | head -n1 | sed 's/.*impi_rt-//')
hash=$( { cat "${BASH_SOURCE[0]}" "$hello_src"; echo "$packages $impi_version"; } | sha256sum | cut -c1-16)

current=$(docker image inspect --format '{{ index .Config.Labels "shipyard.build-hash" }}' "$image" 2>/dev/null || true)
if [ "${1:-}" != "--force" ] && [ "$current" = "$hash" ]; then
  log "$image is up to date (build hash $hash)"
  exit 0
fi

work=${SHIPYARD_BUILD_DIR:-$(mktemp -d /var/tmp/shipyard-image.XXXXXX)}
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
rootfs=$work/rootfs
mkdir -p "$work/bin"

log "compiling the MPI smoke-test program for each MPI"
mpicc.openmpi -O2 -o "$work/bin/mpi-hello-openmpi" "$hello_src"
mpicc.mpich -O2 -o "$work/bin/mpi-hello-mpich" "$hello_src"
# Intel MPI's runtime ships no headers: compile against MPICH's (same ABI), link Intel's libmpi.
cc -O2 -I/usr/include/x86_64-linux-gnu/mpich -o "$work/bin/mpi-hello-impi" "$hello_src" \
  -L"$impi/lib" -Wl,-rpath,/opt/intel/mpi/lib -l:libmpi.so.12

log "debootstrap bookworm ($packages) from $mirror"
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 30 "$work/debootstrap.log" >&2; die "debootstrap failed (log above)"; }

log "adding Intel MPI $impi_version and the smoke-test programs"
mkdir -p "$rootfs/opt/intel/mpi/bin" "$rootfs/opt/intel/mpi/lib" "$rootfs/opt/shipyard/bin"
for f in "$impi"/bin/*; do
  case "$(basename "$f")" in IMB-*) continue ;; esac
  cp -a "$f" "$rootfs/opt/intel/mpi/bin/"
done
cp -a "$impi/lib/libmpi.so.12" "$rootfs/opt/intel/mpi/lib/"
ln -sf libmpi.so.12 "$rootfs/opt/intel/mpi/lib/libmpi.so"
[ -d "$impi/lib/mpi" ] && cp -a "$impi/lib/mpi" "$rootfs/opt/intel/mpi/lib/"
[ -d "$impi/opt" ] && cp -a "$impi/opt" "$rootfs/opt/intel/mpi/"
[ -d "$impi/etc" ] && cp -a "$impi/etc" "$rootfs/opt/intel/mpi/"
install -m 0755 "$work"/bin/mpi-hello-* "$rootfs/opt/shipyard/bin/"

log "removing SSH host keys and package caches"
rm -f "$rootfs"/etc/ssh/ssh_host_*
mkdir -p "$rootfs/run/sshd"
rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log
if ls "$rootfs"/etc/ssh/ssh_host_* >/dev/null 2>&1; then die "host keys left in the rootfs"; fi

log "importing $image"
tar -C "$rootfs" -c . | docker import \
  --change "LABEL shipyard.build-hash=$hash" \
  --change "LABEL org.opencontainers.image.title=shipyard-mpi" \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' \
  - "$image" >/dev/null
log "built $image (build hash $hash)"
