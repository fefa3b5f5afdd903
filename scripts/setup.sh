#!/usr/bin/env bash
# Installs and starts what shipyard needs to run MPI jobs locally and to run its test suite, on a
# Debian/Ubuntu host as root. Idempotent: on a machine that has everything it only checks.
#   - Debian packages: the Docker engine (docker.io), Open MPI and MPICH with their compilers,
#     debootstrap, openssh, libfabric1, iproute2
#   - the Intel MPI runtime (impi-rt from PyPI) under /opt/intel/mpi (not on PATH: a bare
#     `mpirun` stays whatever it was)
#   - a running dockerd (started in the background when `docker info` fails)
#   - the image shipyard/mpi:bookworm, built offline by scripts/build-image.sh (cached by content)
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
impi=${SHIPYARD_IMPI_ROOT:-/opt/intel/mpi}
impi_version=${SHIPYARD_IMPI_VERSION:-2021.19.0}
packages=(docker.io openmpi-bin libopenmpi-dev mpich libmpich-dev debootstrap openssh-server
  openssh-client libfabric1 iproute2 procps python3-pip)
# the private-registry test (tests/tests/registry.rs): a loopback registry with htpasswd auth
packages+=(docker-registry)

log() { printf '[setup] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts dockerd)"

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
# python3-pip is only needed when no pip is on PATH (pyenv or similar provide one).
if command -v pip3 >/dev/null || command -v pip >/dev/null; then
  missing=("${missing[@]/python3-pip}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "Debian packages present"
fi

if [ ! -x "$impi/bin/mpiexec.hydra" ]; then
  log "installing the Intel MPI runtime impi-rt==$impi_version into $impi"
  pip=$(command -v pip3 || command -v pip)
  "$pip" install -q --disable-pip-version-check --no-deps --prefix "$impi" "impi-rt==$impi_version"
  [ -x "$impi/bin/mpiexec.hydra" ] || die "impi-rt installed but $impi/bin/mpiexec.hydra is missing"
else
  log "Intel MPI runtime present at $impi"
fi

if ! docker info >/dev/null 2>&1; then
  # A dockerd killed with its session leaves pid files behind; dockerd refuses to start over a pid
  # file whose process is alive, so drop the ones that name no dockerd/containerd.
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ]; then
      pid=$(cat "$pidfile" 2>/dev/null || true)
      if [ -z "$pid" ] || ! grep -qE 'dockerd|containerd' "/proc/$pid/comm" 2>/dev/null; then
        rm -f "$pidfile"
      fi
    fi
  done
  log "starting dockerd (log: /var/log/shipyard-dockerd.log)"
  setsid nohup dockerd >/var/log/shipyard-dockerd.log 2>&1 < /dev/null &
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 20 /var/log/shipyard-dockerd.log >&2; die "dockerd did not come up within 60 s"; }
fi
log "Docker engine $(docker info --format '{{.ServerVersion}}') is running"

bash "$repo/scripts/build-image.sh"

# ---- charliecloud (helper G, issue 15): ch-run for the Charliecloud runtime plugin's tests ----
if ! command -v ch-run >/dev/null 2>&1; then
  log "installing Debian package charliecloud-runtime"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends charliecloud-runtime >/dev/null \
    || { apt-get update -qq && apt-get install -y -qq --no-install-recommends charliecloud-runtime >/dev/null; } \
    || die "cannot install charliecloud-runtime"
else
  log "charliecloud-runtime present ($(USER=${USER:-root} ch-run --version 2>&1))"
fi
# ---- end charliecloud ----
# ---- shipyard-storage: Azurite (the Blob service emulator) for tests/tests/storage_azurite.rs ----
# Installed from npm into a fixed prefix (not on PATH); the tests look for
# $SHIPYARD_AZURITE_PREFIX/node_modules/.bin/azurite-blob. 3.35.0 is the newest release whose
# declared engine accepts Debian bookworm's Node 18 (3.36+ ask for Node 21+).
azurite_prefix=${SHIPYARD_AZURITE_PREFIX:-/opt/shipyard/azurite}
azurite_version=${SHIPYARD_AZURITE_VERSION:-3.35.0}
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  log "installing Debian packages: nodejs npm"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
azurite_installed=$(node -p "require('$azurite_prefix/node_modules/azurite/package.json').version" 2>/dev/null || true)
if [ "$azurite_installed" != "$azurite_version" ] || [ ! -x "$azurite_prefix/node_modules/.bin/azurite-blob" ]; then
  log "installing azurite@$azurite_version into $azurite_prefix"
  mkdir -p "$azurite_prefix"
  npm install --prefix "$azurite_prefix" --no-audit --no-fund --loglevel=error "azurite@$azurite_version" >/dev/null
  [ -x "$azurite_prefix/node_modules/.bin/azurite-blob" ] || die "azurite installed but azurite-blob is missing"
else
  log "Azurite $azurite_installed present at $azurite_prefix"
fi
# ---- end shipyard-storage ----
# --- begin shipyard-vm-node (VM-like nodes: crates/vm-node, tests/tests/vm_nodes.rs) ---
# Namespaces, a bridge and an iptables FORWARD rule per pool, a dockerd per node, and a
# pool-local image registry (Debian's docker-registry; shipyard starts it itself, on the
# pool's own addresses, so the packaged service is not needed).
vm_missing=()
for p in iproute2 iptables util-linux docker-registry; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || vm_missing+=("$p")
done
if [ "${#vm_missing[@]}" -gt 0 ]; then
  log "installing Debian packages for VM-like nodes: ${vm_missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${vm_missing[@]}" >/dev/null
fi
command -v docker-registry >/dev/null || die "docker-registry is missing after installing it"
# --- end shipyard-vm-node ---

# ---- shipyard-serve: Python venv with the azure-batch 15.1.0 SDK for crates/serve/tests/sdk_python.rs ----
# and scripts/bench-serve.sh. Idempotent: kept at $SHIPYARD_PYVENV (default /opt/shipyard/pyvenv).
pyvenv=${SHIPYARD_PYVENV:-/opt/shipyard/pyvenv}
if "$pyvenv/bin/python" -c "import azure.batch, sys; sys.exit(azure.batch.__version__ != '15.1.0')" 2>/dev/null; then
  log "azure-batch 15.1.0 present in $pyvenv"
else
  log "installing azure-batch==15.1.0 into $pyvenv"
  command -v python3 >/dev/null || die "python3 is needed for the azure-batch SDK venv"
  mkdir -p "$(dirname "$pyvenv")"
  python3 -m venv "$pyvenv" || die "cannot create the venv $pyvenv (python3-venv missing?)"
  "$pyvenv/bin/pip" install -q "azure-batch==15.1.0" || die "cannot install azure-batch==15.1.0 from PyPI"
fi
# ---- end shipyard-serve ----

log "ready"
