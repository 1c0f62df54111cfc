#!/usr/bin/env bash
# Brings the real docker-compose.yml up and uses it as the README tells users to, with
# mosquitto clients on the host: subscribe on node1 (1883), publish on node2 (1884), retained
# on node2 seen from node1, node2 killed and restarted keeping its retained message and a
# persistent session (its volume), node2 stopped while node1 and node3 go on, node2 back, scaled up and
# down through the service name's DNS, a session on node3 resumed at node1 after node3 is
# killed, node3 cut off the network and healed, and node2 and node3 forming a cluster while
# node1 is down (no node is the seed); the cluster runs under the secret the one-shot
# service cluster-secret made, MQTT published on the host's loopback only. Every step is
# bounded; everything is torn down even when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/compose-env.sh

project=vibemq-compose-test
compose() { timeout 120 docker-compose -p "$project" "$@"; }
log() { printf '\n== compose-test: %s\n' "$*"; }
fail() { echo "compose-test FAILED: $*" >&2; dump; exit 1; }
dump() {
    compose ps || true
    compose logs --tail=40 || true
}
workdir=$(mktemp -d)
sub_pid=""
no_node1_sub=""
cleanup() {
    [ -n "$sub_pid" ] && kill "$sub_pid" 2>/dev/null || true
    [ -n "$no_node1_sub" ] && kill "$no_node1_sub" 2>/dev/null || true
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
trap cleanup EXIT

# Waits (up to $2 seconds) until command $1 succeeds.
wait_for() {
    local what=$1 limit=$2 start=$SECONDS
    until eval "$what" >/dev/null 2>&1; do
        (( SECONDS - start < limit )) || fail "timed out after ${limit}s waiting for: $what"
        sleep 0.5
    done
}
container() { docker ps -q --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1" | head -1; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$1")")" = healthy ]; }
# The cluster API of a node (node1 unless named).
api() { compose exec -T "${1:-node1}" /usr/local/bin/vibemq probe /api/v1/cluster; }
# The node ($2, node1 unless named) has $1 links up.
links_up() { [ "$(api "${2:-node1}" | grep -o '"link":"up"' | wc -l)" -eq "$1" ]; }
peer_status() { api | grep -o "\"node_id\":\"$1\"[^}]*" | grep -q "\"status\":\"$2\""; }
# node1 or node2 keeps a copy of a session held elsewhere, with a message in it.
copy_held() {
    local n
    for n in node1 node2; do
        compose exec -T "$n" /usr/local/bin/vibemq probe /metrics \
            | grep -q '^vibemq_session_replica_messages [1-9]' && return 0
    done
    return 1
}
# A message published on port $1 reaches the subscriber on node1 (retried: routes may still be
# settling after a change in the cluster).
delivered() {
    local port=$1 text="m-$RANDOM-$RANDOM"
    mosquitto_pub -p "$port" -t "ct/probe" -m "$text" -q 1 || return 1
    sleep 0.3
    grep -q "$text" "$workdir/sub.out"
}

log "building the image offline"
bash scripts/build-image.sh vibemq:latest
compose down -v --remove-orphans >/dev/null 2>&1 || true

log "starting node1..3"
compose up -d --no-build node1 node2 node3
for n in node1 node2 node3; do wait_for "healthy $n" 90; done
wait_for "links_up 2" 30
# The cluster runs under the secret the one-shot service cluster-secret made, and MQTT is
# published on the host's loopback only.
api | grep -q '"secret":true' || fail "the Compose cluster runs without a secret"
docker port "$(container node1)" 1883/tcp | grep -qx '127.0.0.1:1883' \
    || fail "node1's MQTT port is published beyond the host's loopback: $(docker port "$(container node1)" 1883/tcp)"

log "subscribe on node1 (1883), publish on node2 (1884) and node3 (1885)"
mosquitto_sub -p 1883 -t 'ct/#' -q 1 -v > "$workdir/sub.out" &
sub_pid=$!
wait_for "delivered 1884" 30
wait_for "delivered 1885" 30

log "retained on node2, seen by a new subscriber on node1"
mosquitto_pub -p 1884 -t ct-retained/config -m v1 -r -q 1
wait_for "timeout 5 mosquitto_sub -p 1883 -t ct-retained/config -C 1 -W 3 | grep -qx v1" 30

log "persistence: node2 killed (SIGKILL) and started again keeps its retained message and a persistent session"
mosquitto_sub -p 1884 -c -i ct-keeper -q 1 -t 'ct-persist/#' -E
mosquitto_pub -p 1884 -t ct-persist/x -m kept-across-restart -q 1
compose kill -s SIGKILL node2
compose start node2
wait_for "healthy node2" 90
# Read back from its own volume (the last start's line), not resent by a peer.
compose logs node2 | grep "store read back" | tail -1 | grep -q "retained=[1-9].* sessions=[1-9]" \
    || fail "node2 did not read its retained message and session back from its volume"
timeout 15 mosquitto_sub -p 1884 -c -i ct-keeper -q 1 -t 'ct-persist/#' -C 1 -W 10 | grep -qx kept-across-restart \
    || fail "the persistent session's queued message did not survive node2's restart"
wait_for "timeout 5 mosquitto_sub -p 1884 -t ct-retained/config -C 1 -W 3 | grep -qx v1" 30
wait_for "links_up 2" 60

log "stop node2: node1 and node3 go on"
compose stop node2
wait_for "delivered 1885" 30
wait_for "links_up 1" 60

log "start node2 again: it rejoins"
compose start node2
wait_for "healthy node2" 90
wait_for "links_up 2" 60
wait_for "delivered 1884" 30

log "scale: two extra nodes found through the service name, then removed"
compose up -d --no-build --no-recreate --scale extra=2 extra
wait_for "links_up 4" 90
compose up -d --no-build --no-recreate --scale extra=0 extra
wait_for "links_up 2" 90
wait_for "delivered 1885" 30

log "sessions: a session on node3 resumes at node1 after node3 is killed (from its copy on another node)"
mosquitto_sub -p 1885 -c -i ct-roamer -q 1 -t 'ct-roam/#' -E
mosquitto_pub -p 1884 -t ct-roam/x -m survives-its-node -q 1
wait_for "copy_held" 30
compose kill -s SIGKILL node3
timeout 25 mosquitto_sub -p 1883 -c -i ct-roamer -q 1 -t 'ct-roam/#' -C 1 -W 20 | grep -qx survives-its-node \
    || fail "the session's queued message did not come back at node1 after node3 was killed"
compose start node3
wait_for "healthy node3" 90
wait_for "links_up 2" 60

log "partition: node3 cut off the network, then healed"
network="${project}_cluster"
docker network disconnect "$network" "$(container node3)"
# Declared failed by the failure detector (routes dropped, queue kept for its return).
wait_for "peer_status node3 suspended" 60
wait_for "delivered 1884" 30
docker network connect --alias vibemq "$network" "$(container node3)"
wait_for "peer_status node3 connected" 90
wait_for "delivered 1885" 30

log "node1 down: node2 and node3, started again without it, find each other and form a cluster"
compose stop node1
compose restart node2 node3
wait_for "healthy node2" 90
wait_for "healthy node3" 90
wait_for "links_up 1 node2" 60
wait_for "links_up 1 node3" 60
mosquitto_sub -p 1885 -t 'ct-no-node1/#' -q 1 -v > "$workdir/no-node1.out" &
no_node1_sub=$!
no_node1_delivered() {
    local text="n-$RANDOM-$RANDOM"
    mosquitto_pub -p 1884 -t ct-no-node1/x -m "$text" -q 1 || return 1
    sleep 0.3
    grep -q "$text" "$workdir/no-node1.out"
}
wait_for no_node1_delivered 30
kill "$no_node1_sub" 2>/dev/null || true
compose start node1
wait_for "healthy node1" 90
wait_for "links_up 2" 60

log "all steps passed"
