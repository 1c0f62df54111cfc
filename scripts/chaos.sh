#!/usr/bin/env bash
# A chaos run of the Docker Compose cluster: vibemq-bench publishes QoS 1 on node2 (host port
# 1884) to a subscriber on node1 (1883) while, every few seconds, a fault strikes: a node
# frozen (docker pause, any node: the data path included), node3 killed (docker kill) and
# started again, or node3 cut off the network (docker network disconnect) and reconnected.
# At the end it prints vibemq-bench's count (sent, acknowledged, delivered, lost, lost of the
# acknowledged, duplicated) and fails if an acknowledged message was lost or one was
# duplicated.
#
#   scripts/chaos.sh [SECONDS] [SEED]     # CI runs 60 s; by hand, say, 600
#
# The image must exist (scripts/build-image.sh; scripts/test.sh builds it for the compose
# test). Every wait is bounded; everything is torn down even when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/compose-env.sh

seconds=${1:-60}
seed=${2:-$RANDOM}
project=vibemq-chaos
compose() { timeout 120 docker-compose -p "$project" "$@"; }
log() { printf '\n== chaos: %s\n' "$*"; }
workdir=$(mktemp -d)
bench_pid=""
cleanup() {
    [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
    for n in node1 node2 node3; do
        c=$(container "$n" 2>/dev/null) && [ -n "$c" ] && docker unpause "$c" >/dev/null 2>&1 || true
    done
    compose down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$workdir"
}
container() { docker ps -aq --filter "label=com.docker.compose.project=$project" --filter "label=com.docker.compose.service=$1" | head -1; }
healthy() { [ "$(docker inspect -f '{{.State.Health.Status}}' "$(container "$1")")" = healthy ]; }
wait_for() {
    local what=$1 limit=$2 start=$SECONDS
    until eval "$what" >/dev/null 2>&1; do
        if (( SECONDS - start >= limit )); then
            echo "chaos FAILED: timed out after ${limit}s waiting for: $what" >&2
            compose ps || true
            compose logs --tail=30 || true
            exit 1
        fi
        sleep 0.5
    done
}
trap cleanup EXIT

docker image inspect vibemq:latest >/dev/null 2>&1 || bash scripts/build-image.sh vibemq:latest
cargo build --quiet --bin vibemq-bench
bench=target/debug/vibemq-bench
compose down -v --remove-orphans >/dev/null 2>&1 || true

log "starting node1..3 (seed $seed, $seconds s of faults)"
compose up -d --no-build node1 node2 node3
for n in node1 node2 node3; do wait_for "healthy $n" 90; done

# The load: two publishers at 100 msg/s each, from before the first fault until after the
# last; the drain leaves time for what was held for a frozen or cut-off node.
"$bench" pubsub --pub-host 127.0.0.1:1884 --sub-host 127.0.0.1:1883 --publishers 2 \
    --topic 'chaos/%i' --sub-topic 'chaos/+' --qos 1 --rate 100 \
    --duration "$((seconds + 10))" --drain 90 --json > "$workdir/bench.out" 2> "$workdir/bench.err" &
bench_pid=$!
sleep 5

network="${project}_cluster"
RANDOM=$seed
faults=0
end=$((SECONDS + seconds))
while (( SECONDS < end )); do
    length=$((2 + RANDOM % 7))
    case $((RANDOM % 4)) in
        0|1)
            node="node$((1 + RANDOM % 3))"
            log "pause $node for ${length}s"
            docker pause "$(container "$node")" >/dev/null
            sleep "$length"
            docker unpause "$(container "$node")" >/dev/null
            ;;
        2)
            log "kill node3, start it again after ${length}s"
            docker kill "$(container node3)" >/dev/null
            sleep "$length"
            docker start "$(container node3)" >/dev/null
            wait_for "healthy node3" 90
            ;;
        3)
            log "cut node3 off the network for ${length}s"
            docker network disconnect "$network" "$(container node3)"
            sleep "$length"
            docker network connect --alias vibemq "$network" "$(container node3)"
            ;;
    esac
    faults=$((faults + 1))
    sleep $((1 + RANDOM % 3))
done

log "$faults faults; waiting for the load to finish and drain"
for _ in $(seq 1 240); do
    kill -0 "$bench_pid" 2>/dev/null || break
    sleep 1
done
if kill -0 "$bench_pid" 2>/dev/null; then
    echo "chaos FAILED: vibemq-bench did not finish" >&2
    exit 1
fi
wait "$bench_pid" || { echo "chaos FAILED: vibemq-bench failed" >&2; cat "$workdir/bench.err" >&2; exit 1; }
bench_pid=""
summary=$(tail -1 "$workdir/bench.out")
echo "$summary"
python3 - "$summary" "$seconds" "$faults" "$seed" <<'EOF'
import json, sys
s = json.loads(sys.argv[1])
seconds, faults, seed = sys.argv[2], sys.argv[3], sys.argv[4]
print(f"chaos: {seconds} s, {faults} faults, seed {seed}: sent {s['sent']}, acknowledged "
      f"{s['acked']}, delivered {s['received']}, lost {s['lost']}, lost of the acknowledged "
      f"{s['lost_acked']}, duplicated {s['duplicates']}")
problems = []
if s["acked"] == 0:
    problems.append("nothing was acknowledged")
if s["lost_acked"]:
    problems.append(f"{s['lost_acked']} acknowledged messages lost")
if s["duplicates"]:
    problems.append(f"{s['duplicates']} duplicates")
if problems:
    sys.exit("chaos FAILED: " + "; ".join(problems))
EOF
log "passed"
