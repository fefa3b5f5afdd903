#!/usr/bin/env bash
# Hand-written docker CLI baseline for scripts/bench-local.sh: the same work the local backend
# does for a hello job on N nodes, the obvious way — one `docker run -d` per node one after
# another, sshd started in each, `docker exec` mpirun on the first, `docker rm -f` at the end.
# Usage: local-baseline.sh NODES [IMAGE]
set -euo pipefail
N=${1:?usage: local-baseline.sh NODES [IMAGE]}
IMAGE=${2:-shipyard/mpi:bookworm}
ID="bench-cli-$$-$RANDOM"
NET="$ID-net"
KEYS=$(mktemp -d)
cleanup() {
  for i in $(seq 0 $((N - 1))); do docker rm -f "$ID-$i" >/dev/null 2>&1 || true; done
  docker network rm "$NET" >/dev/null 2>&1 || true
  rm -rf "$KEYS"
}
trap cleanup EXIT

ssh-keygen -q -t ed25519 -N "" -f "$KEYS/id_ed25519"
cp "$KEYS/id_ed25519.pub" "$KEYS/authorized_keys"
printf 'Host *\n  Port 23\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  BatchMode yes\n  LogLevel ERROR\n' >"$KEYS/config"
chmod 600 "$KEYS"/*

# A /24 nobody uses (10.215.x.0/24; x from the pid).
SUB="10.215.$(( $$ % 250 )).0"
docker network create --label shipyard.bench=1 --subnet "${SUB%.0}.0/24" "$NET" >/dev/null
HOSTS=()
ADD=()
for i in $(seq 0 $((N - 1))); do
  ip="${SUB%.0}.$((i + 2))"
  HOSTS+=("$ip")
  ADD+=(--add-host "node-$i:$ip")
done
for i in $(seq 0 $((N - 1))); do
  docker run -d --init --label shipyard.bench=1 --name "$ID-$i" --hostname "node-$i" \
    --network "$NET" --ip "${HOSTS[$i]}" "${ADD[@]}" \
    -v "$KEYS/authorized_keys:/root/.ssh/authorized_keys:ro" \
    -v "$KEYS/id_ed25519:/root/.ssh/id_ed25519:ro" \
    -v "$KEYS/config:/root/.ssh/config:ro" \
    "$IMAGE" sleep infinity >/dev/null
  docker exec "$ID-$i" /bin/bash -c 'mkdir -p /run/sshd && ssh-keygen -q -t ed25519 -N "" -f /etc/ssh/ssh_host_ed25519_key && /usr/sbin/sshd -p 23 -h /etc/ssh/ssh_host_ed25519_key'
done
for ip in "${HOSTS[@]}"; do
  until (exec 3<>"/dev/tcp/$ip/23") 2>/dev/null; do sleep 0.05; done
done
LIST=$(IFS=,; echo "${HOSTS[*]}")
docker exec -e HELLO_EXPECT_SIZE="$N" "$ID-0" mpirun.openmpi --allow-run-as-root -np "$N" \
  --host "$LIST" --mca btl tcp,self --mca btl_tcp_if_include eth0 --mca oob_tcp_if_include eth0 \
  -x HELLO_EXPECT_SIZE /opt/shipyard/bin/mpi-hello-openmpi
