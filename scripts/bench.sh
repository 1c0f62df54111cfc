#!/usr/bin/env bash
# Side-by-side benchmark of VibeMQ and mosquitto on this machine, in one run, on loopback,
# with vibemq-bench as the load for both. Writes BENCHMARKS.md (machine, versions, commands,
# a table of figures and ratios). Each broker runs alone, in turn, with equal drop-free limits.
#   scripts/bench.sh            # full run (several minutes)
#   scripts/bench.sh --smoke    # seconds: checks the tooling works (CI runs this)
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=false
[ "${1:-}" = "--smoke" ] && smoke=true
DUR=${BENCH_DURATION:-5}
$smoke && DUR=1

have() { command -v "$1" >/dev/null 2>&1; }
if ! have mosquitto && [ ! -x /usr/sbin/mosquitto ]; then
    echo "== installing mosquitto (the service is not started)"
    # A policy that forbids starting services while the package installs.
    policy=/usr/sbin/policy-rc.d
    saved=""
    [ -e "$policy" ] && saved=$(mktemp) && cp "$policy" "$saved"
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto >/dev/null \
        || { echo "FATAL: cannot install mosquitto" >&2; exit 1; }
    if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
fi
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)"
# Connection-scale scenarios need one descriptor per client in the broker and in vibemq-bench:
# a size that does not fit under the hard limit is not run, and the report says so.
HARD_FILES=$(ulimit -Hn)
fits() { [ "$HARD_FILES" = unlimited ] || [ $(( $1 + 1100 )) -le "$HARD_FILES" ]; }
# Many loopback source addresses: one address reaches one broker port from ~28,000 ports only.
SOURCES=127.0.0.2-127.0.0.20

cargo build --release --quiet --bin vibemq --bin vibemq-bench
VIBEMQ=target/release/vibemq
BENCH=target/release/vibemq-bench
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]:-}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done; echo "nothing listens on $1" >&2; return 1; }

# Starts one broker ($1 = vibemq|mosquitto) on port $2; prints its pid.
start_broker() {
    local kind=$1 p=$2
    if [ "$kind" = mosquitto ]; then
        cat > "$work/mosquitto.conf" <<CONF
listener $p 127.0.0.1
allow_anonymous true
max_inflight_messages 0
max_queued_messages 0
max_queued_bytes 0
persistence false
log_type error
CONF
        "$MOSQUITTO" -c "$work/mosquitto.conf" >/dev/null 2>&1 &
    else
        "$VIBEMQ" --bind "127.0.0.1:$p" --http-bind 127.0.0.1:0 --log-level error \
            --max-inflight 65535 --max-queued-messages 100000000 >/dev/null 2>&1 &
    fi
    echo $!
}

# The same brokers on their default limits (mosquitto: max_queued_messages 1000,
# max_inflight_messages 20; VibeMQ: config/default.toml), for the overload scenarios.
start_broker_defaults() {
    local kind=$1 p=$2
    if [ "$kind" = mosquitto ]; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nlog_type error\n' "$p" > "$work/mosquitto-defaults.conf"
        "$MOSQUITTO" -c "$work/mosquitto-defaults.conf" >/dev/null 2>&1 &
    else
        "$VIBEMQ" --bind "127.0.0.1:$p" --http-bind 127.0.0.1:0 --log-level error >/dev/null 2>&1 &
    fi
    echo $!
}

# A broker with its store on ($1 = vibemq|mosquitto, $2 = off|interval|always|on, $3 = port):
# VibeMQ with [persistence] off or on with that sync; mosquitto in memory or with `persistence
# true` (saved every second: its shortest autosave_interval).
start_persistent_broker() {
    local kind=$1 mode=$2 p=$3 store="$work/store-$1-$2"
    rm -rf "$store"; mkdir -p "$store"
    if [ "$kind" = mosquitto ]; then
        printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 0\nmax_queued_messages 0\nmax_queued_bytes 0\nlog_type error\n' "$p" > "$work/mosquitto-$mode.conf"
        if [ "$mode" = on ]; then
            printf 'persistence true\npersistence_location %s/\nautosave_interval 1\n' "$store" >> "$work/mosquitto-$mode.conf"
        else
            echo 'persistence false' >> "$work/mosquitto-$mode.conf"
        fi
        "$MOSQUITTO" -c "$work/mosquitto-$mode.conf" >/dev/null 2>&1 &
    else
        local enabled=true sync=$mode
        [ "$mode" = off ] && { enabled=false; sync=always; }
        VIBEMQ_PERSISTENCE_ENABLED=$enabled VIBEMQ_PERSISTENCE_SYNC=$sync VIBEMQ_PERSISTENCE_DIR="$store" \
            "$VIBEMQ" --bind "127.0.0.1:$p" --http-bind 127.0.0.1:0 --log-level error \
            --max-inflight 65535 --max-queued-messages 100000000 >/dev/null 2>&1 &
    fi
    echo $!
}

# 11: what persistence costs. QoS 1 fan-in into one subscriber with a persistent session (clean
# start off), so every message is kept for it until acknowledged.
run_persistence() {
    local kind=$1 mode=$2 scenario="11. QoS 1 fan-in ($N_FANIN to 1), persistent subscriber"
    local p; p=$(port)
    local pid; pid=$(start_persistent_broker "$kind" "$mode" "$p"); pids+=("$pid")
    wait_port "$p"
    local out
    out=$("$BENCH" pubsub --host "127.0.0.1:$p" --duration "$DUR" --json --persistent --qos 1 \
        --publishers "$N_FANIN" --topic 'keep/%i' --sub-topic 'keep/+' 2>"$work/persist.err" | tail -1) \
        || { echo "vibemq-bench against $kind ($mode) failed:" >&2; tail -5 "$work/persist.err" >&2; return 1; }
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "   $kind persistence $mode: $out" >&2
    record "$scenario" msgs_per_sec "$kind $mode" "$(field "$out" msgs_per_sec)"
    record "$scenario" lost "$kind $mode" "$(field "$out" lost)"
    record "$scenario" p99_us "$kind $mode" "$(field "$out" latency_us.p99)"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
field() { python3 -c "import json,sys; d=json.loads(sys.argv[1]); v=d
for k in sys.argv[2].split('.'): v=v[k]
print(v)" "$1" "$2"; }

results="$work/results.tsv"
: > "$results"
record() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >> "$results"; }  # scenario metric broker value

# Runs vibemq-bench against a fresh broker; stores the JSON in $out.
run_pubsub() {
    local kind=$1 scenario=$2; shift 2
    local p; p=$(port)
    local pid; pid=$(start_broker "$kind" "$p"); pids+=("$pid")
    wait_port "$p"
    local before; before=$(cpu_ticks "$pid")
    out=$("$BENCH" pubsub --host "127.0.0.1:$p" --duration "$DUR" --json "$@" 2>"$work/pubsub.err" | tail -1) \
        || { echo "vibemq-bench $* against $kind failed:" >&2; grep -v '^ *at \|^ *[0-9]*: ' "$work/pubsub.err" | tail -15 >&2; return 1; }
    local cpu=$(( $(cpu_ticks "$pid") - before ))
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "   $kind $scenario: $out" >&2
    record "$scenario" msgs_per_sec "$kind" "$(field "$out" msgs_per_sec)"
    record "$scenario" lost "$kind" "$(field "$out" lost)"
    record "$scenario" p50_us "$kind" "$(field "$out" latency_us.p50)"
    record "$scenario" p99_us "$kind" "$(field "$out" latency_us.p99)"
    record "$scenario" broker_cpu_s "$kind" "$(python3 -c "print(round($cpu/100, 2))")"
}

# One vibemq-bench pubsub run against a fresh broker on its default limits; prints the JSON.
run_defaults() {
    local kind=$1; shift
    local p; p=$(port)
    local pid; pid=$(start_broker_defaults "$kind" "$p"); pids+=("$pid")
    wait_port "$p"
    local out
    out=$("$BENCH" pubsub --host "127.0.0.1:$p" --duration "$DUR" --json "$@" 2>"$work/defaults.err" | tail -1)
    kill "$pid"; wait "$pid" 2>/dev/null || true
    [ -n "$out" ] || { echo "vibemq-bench $* against $kind gave no result:" >&2; grep -v '^ *at \|^ *[0-9]*: ' "$work/defaults.err" | tail -15 >&2; return 1; }
    echo "$out"
}

# 8: overload must degrade, not collapse. One QoS 0 publisher to one subscriber, paced at
# several rates and then unpaced, on default limits: the unpaced delivery rate against the
# best paced one.
run_overload() {
    local kind=$1 best=0 out rate got
    for rate in $OVERLOAD_RATES; do
        out=$(run_defaults "$kind" --qos 0 --rate "$rate")
        got=$(field "$out" msgs_per_sec)
        echo "   $kind paced at $rate/s: $got msg/s delivered" >&2
        best=$(python3 -c "print(max($best, $got))")
    done
    out=$(run_defaults "$kind" --qos 0)
    got=$(field "$out" msgs_per_sec)
    echo "   $kind unpaced: $out" >&2
    record "8. QoS 0 1 to 1, default limits: overload" best_paced_msgs_per_sec "$kind" "$best"
    record "8. QoS 0 1 to 1, default limits: overload" unpaced_msgs_per_sec "$kind" "$got"
    record "8. QoS 0 1 to 1, default limits: overload" unpaced_over_best_paced "$kind" \
        "$(python3 -c "print(round($got / max($best, 1), 3))")"
}

# 9: slow-consumer isolation. A QoS 1 publisher at 2,000 msg/s to a healthy subscriber, alone
# and then beside a v5 subscriber with Receive Maximum 1 acknowledging every 1.5 s, on default
# limits: what the healthy one receives with the slow one, against without.
run_slow_consumer() {
    local kind=$1 alone beside a b
    alone=$(run_defaults "$kind" --qos 1 --rate 2000 --topic slow --sub-topic slow)
    beside=$(run_defaults "$kind" --qos 1 --rate 2000 --topic slow --sub-topic slow --slow-subscribers 1 --slow-ack-ms 1500)
    echo "   $kind alone: $alone" >&2
    echo "   $kind beside a slow one: $beside" >&2
    a=$(field "$alone" received); b=$(field "$beside" received)
    record "9. QoS 1 at 2,000 msg/s beside a slow subscriber" healthy_received_alone "$kind" "$a"
    record "9. QoS 1 at 2,000 msg/s beside a slow subscriber" healthy_received_beside_slow "$kind" "$b"
    record "9. QoS 1 at 2,000 msg/s beside a slow subscriber" beside_over_alone "$kind" \
        "$(python3 -c "print(round($b / max($a, 1), 3))")"
    record "9. QoS 1 at 2,000 msg/s beside a slow subscriber" lost "$kind" "$(field "$beside" lost)"
}

run_conn() {
    local kind=$1 n=$2
    local p; p=$(port)
    local pid; pid=$(start_broker "$kind" "$p"); pids+=("$pid")
    wait_port "$p"
    sleep 0.3
    local base; base=$(rss_kb "$pid")
    "$BENCH" conn --host "127.0.0.1:$p" --clients "$n" --connect-rate 5000 --duration 4 \
        --source-ips "$SOURCES" --json > "$work/conn.json" 2> "$work/conn.err" &
    local bpid=$!
    for _ in $(seq 1200); do grep -q "all connections open" "$work/conn.err" && break; sleep 0.1; done
    sleep 1
    local loaded; loaded=$(rss_kb "$pid")
    wait "$bpid" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    local connected; connected=$(field "$(tail -1 "$work/conn.json")" connected)
    echo "   $kind idle: $connected connections, RSS $base -> $loaded kB" >&2
    record "5. idle connections ($n)" connected "$kind" "$connected"
    record "5. idle connections ($n)" bytes_per_conn "$kind" "$(python3 -c "print(round(($loaded-$base)*1024/max($connected,1)))")"
}

notes="$work/notes.txt"
: > "$notes"

# 12: connection scale. N subscribers, each on its own topic, and one publisher spreading
# N msg/s over their topics: each client gets 1 msg/s. Connect rate (unpaced connects), peak
# RSS, latency and loss.
run_many() {
    local kind=$1 n=$2 scenario="12. $3 clients, each on its own topic at 1 msg/s"
    local p; p=$(port)
    local pid; pid=$(start_broker "$kind" "$p"); pids+=("$pid")
    wait_port "$p"
    local out
    out=$("$BENCH" pubsub --host "127.0.0.1:$p" --qos 0 --publishers 1 --subscribers "$n" \
        --topic 'many/%m' --sub-topic 'many/%i' --rate "$n" --duration "$DUR" --drain 10 \
        --source-ips "$SOURCES" --json 2>"$work/many.err" | tail -1) \
        || { echo "vibemq-bench many against $kind failed:" >&2; tail -5 "$work/many.err" >&2; return 1; }
    local peak; peak=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "   $kind $scenario: $out (peak RSS $peak kB)" >&2
    record "$scenario" connects_per_sec "$kind" "$(python3 -c "print(round($n / max($(field "$out" subscribers_ready_seconds), 1e-3)))")"
    record "$scenario" peak_rss_mb "$kind" "$(python3 -c "print(round($peak / 1024, 1))")"
    record "$scenario" msgs_per_sec "$kind" "$(field "$out" msgs_per_sec)"
    record "$scenario" p50_us "$kind" "$(field "$out" latency_us.p50)"
    record "$scenario" p99_us "$kind" "$(field "$out" latency_us.p99)"
    record "$scenario" lost "$kind" "$(field "$out" lost)"
}

scenario() { echo "== $1" >&2; }
N_FANOUT=1000; N_PAIRS=10000; N_FANIN=100
IDLE_SIZES="10000 50000 100000"; N_MANY=100000
OVERLOAD_RATES="100000 200000 400000 800000"
$smoke && { N_FANOUT=20; N_PAIRS=20; IDLE_SIZES=200; N_MANY=200; N_FANIN=5; OVERLOAD_RATES="20000"; }
# Sizes past the open-file limit: the largest that fits is measured instead, and noted.
idle_sizes=""
for n in $IDLE_SIZES; do
    if fits "$n"; then idle_sizes="$idle_sizes $n"; else
        echo "- 5. $n idle connections: not measured, the hard open-file limit here is $HARD_FILES (each connection needs a descriptor in the broker and in vibemq-bench)." >> "$notes"
    fi
done
many=$N_MANY
if ! fits "$many"; then
    many=$(( (HARD_FILES - 1100) / 1000 * 1000 ))
    echo "- 12. $N_MANY clients: not measured, the hard open-file limit here is $HARD_FILES; measured at $many, the most that fits." >> "$notes"
    idle_sizes="$idle_sizes $many"
fi

for kind in vibemq mosquitto; do
    scenario "1. QoS 0, 1 to 1 ($kind)"
    run_pubsub "$kind" "1. QoS 0 one-to-one" --qos 0 --size 64
    scenario "2. QoS 1 fan-in $N_FANIN to 1 ($kind)"
    run_pubsub "$kind" "2. QoS 1 fan-in ($N_FANIN to 1)" --qos 1 --publishers "$N_FANIN" --topic 'fanin/%i' --sub-topic 'fanin/+'
    scenario "3. fan-out 1 to 200 and 1 to $N_FANOUT ($kind)"
    run_pubsub "$kind" "3a. QoS 0 fan-out (1 to 200)" --qos 0 --subscribers 200 --topic fan --sub-topic fan
    run_pubsub "$kind" "3b. QoS 0 fan-out (1 to $N_FANOUT)" --qos 0 --subscribers "$N_FANOUT" --topic fan --sub-topic fan --connect-rate 2000
    run_pubsub "$kind" "3c. QoS 1 fan-out (1 to $N_FANOUT)" --qos 1 --subscribers "$N_FANOUT" --topic fan --sub-topic fan --connect-rate 2000
    scenario "4. $N_PAIRS pairs at 1 msg/s each ($kind)"
    run_pubsub "$kind" "4. $N_PAIRS pairs, 1 msg/s each" --qos 0 --publishers "$N_PAIRS" --subscribers "$N_PAIRS" --topic 'pair/%i' --rate 1 --connect-rate 5000
    for n in $idle_sizes; do
        scenario "5. $n idle connections ($kind)"
        run_conn "$kind" "$n"
    done
    scenario "12. $many clients at 1 msg/s each ($kind)"
    run_many "$kind" "$many" "$many"
    scenario "8. overload, paced and unpaced ($kind)"
    run_overload "$kind"
    scenario "9. a slow subscriber beside a healthy one ($kind)"
    run_slow_consumer "$kind"
done

scenario "11. persistence: QoS 1 fan-in to a persistent subscriber"
for setting in "vibemq off" "vibemq interval" "vibemq always" "mosquitto off" "mosquitto on"; do
    run_persistence $setting
done

# 6 and 7: a three-node VibeMQ cluster on loopback.
scenario "6/7. three-node VibeMQ cluster"
cluster_ports=()
g1=$(port)
for n in 1 2 3; do
    mp=$(port); gp=$([ $n = 1 ] && echo "$g1" || port); pp=$(port)
    seeds=$([ $n = 1 ] && echo "" || echo "127.0.0.1:$g1")
    VIBEMQ_CLUSTER_ENABLED=true VIBEMQ_CLUSTER_NODE_ID="bench$n" VIBEMQ_CLUSTER_SEEDS="$seeds" \
    VIBEMQ_CLUSTER_GOSSIP_ADDR="127.0.0.1:$gp" VIBEMQ_CLUSTER_PEER_ADDR="127.0.0.1:$pp" \
    VIBEMQ_CLUSTER_GOSSIP_INTERVAL_MS=200 \
        "$VIBEMQ" --bind "127.0.0.1:$mp" --http-bind 127.0.0.1:0 --log-level error \
        --max-inflight 65535 --max-queued-messages 100000000 >/dev/null 2>&1 &
    pids+=($!)
    cluster_ports+=("$mp")
    wait_port "$mp"
done
sleep 3
A=127.0.0.1:${cluster_ports[0]}; B=127.0.0.1:${cluster_ports[1]}; C=127.0.0.1:${cluster_ports[2]}
single=$("$BENCH" pubsub --host "$A" --qos 1 --publishers 4 --topic 'x/%i' --sub-topic 'x/+' --rate 5000 --duration "$DUR" --json 2>/dev/null | tail -1)
cross=$("$BENCH" pubsub --pub-host "$A" --sub-host "$B" --qos 1 --publishers 4 --topic 'y/%i' --sub-topic 'y/+' --rate 5000 --duration "$DUR" --json 2>/dev/null | tail -1)
echo "   single node: $single" >&2
echo "   cross-node:  $cross" >&2
for k in msgs_per_sec latency_us.p50 latency_us.p99 lost; do
    record "6. cluster, 4 x 5000 msg/s QoS 1" "$k" "same node" "$(field "$single" "$k")"
    record "6. cluster, 4 x 5000 msg/s QoS 1" "$k" "node A to node B" "$(field "$cross" "$k")"
done
# 10: issue 9's third measurement: 20 unpaced QoS 1 publishers on B, one subscriber on A.
# Every message acknowledged to a publisher must arrive (flow control across nodes).
load=$("$BENCH" pubsub --pub-host "$B" --sub-host "$A" --qos 1 --publishers 20 --topic 'b/%i' --sub-topic 'b/+' --duration "$($smoke && echo 1 || echo 4)" --drain 60 --json 2>/dev/null | tail -1)
echo "   cross-node unpaced: $load" >&2
for k in acked received lost_acked duplicates msgs_per_sec; do
    record "10. cross-node QoS 1, 20 unpaced publishers on B, 1 subscriber on A" "$k" "vibemq" "$(field "$load" "$k")"
done
# 13: the cross-node path at its limit: 20 unpaced QoS 1 publishers and one subscriber to
# `b/+`, all on node A, then the publishers on A and the subscriber on B; then both at half the
# cross-node maximum, for the latency the hop adds.
S13="13. QoS 1 fan-in (20 to 1), unpaced, then at half the cross-node maximum"
c13_dur=$($smoke && echo 1 || echo "$DUR")
same=$("$BENCH" pubsub --host "$A" --qos 1 --publishers 20 --topic 'm13/%i' --sub-topic 'm13/+' --duration "$c13_dur" --json 2>/dev/null | tail -1)
cross=$("$BENCH" pubsub --pub-host "$A" --sub-host "$B" --qos 1 --publishers 20 --topic 'c13/%i' --sub-topic 'c13/+' --duration "$c13_dur" --json 2>/dev/null | tail -1)
echo "   same node unpaced:  $same" >&2
echo "   cross-node unpaced: $cross" >&2
half=$(python3 -c "print(max(1, round($(field "$cross" msgs_per_sec) / 2 / 20)))")
same_half=$("$BENCH" pubsub --host "$A" --qos 1 --publishers 20 --topic 'mh/%i' --sub-topic 'mh/+' --rate "$half" --duration "$c13_dur" --json 2>/dev/null | tail -1)
cross_half=$("$BENCH" pubsub --pub-host "$A" --sub-host "$B" --qos 1 --publishers 20 --topic 'ch/%i' --sub-topic 'ch/+' --rate "$half" --duration "$c13_dur" --json 2>/dev/null | tail -1)
echo "   half load ($half msg/s per publisher): same $same_half" >&2
echo "   half load: cross $cross_half" >&2
record "$S13" max_msgs_per_sec "same node" "$(field "$same" msgs_per_sec)"
record "$S13" max_msgs_per_sec "node A to node B" "$(field "$cross" msgs_per_sec)"
record "$S13" max_msgs_per_sec "cross over same" "$(python3 -c "print(round($(field "$cross" msgs_per_sec) / max($(field "$same" msgs_per_sec), 1), 3))")"
record "$S13" lost_acked "node A to node B" "$(field "$cross" lost_acked)"
record "$S13" half_load_msgs_per_sec "each" "$(python3 -c "print($half * 20)")"
record "$S13" half_load_p50_us "same node" "$(field "$same_half" latency_us.p50)"
record "$S13" half_load_p50_us "node A to node B" "$(field "$cross_half" latency_us.p50)"
record "$S13" half_load_p50_us "added by the hop" "$(python3 -c "print($(field "$cross_half" latency_us.p50) - $(field "$same_half" latency_us.p50))")"
record "$S13" half_load_p99_us "same node" "$(field "$same_half" latency_us.p99)"
record "$S13" half_load_p99_us "node A to node B" "$(field "$cross_half" latency_us.p99)"
# At an eighth of the maximum the cores are not saturated: what the hop itself adds.
eighth=$(python3 -c "print(max(1, round($(field "$cross" msgs_per_sec) / 8 / 20)))")
same_light=$("$BENCH" pubsub --host "$A" --qos 1 --publishers 20 --topic 'ml/%i' --sub-topic 'ml/+' --rate "$eighth" --duration "$c13_dur" --json 2>/dev/null | tail -1)
cross_light=$("$BENCH" pubsub --pub-host "$A" --sub-host "$B" --qos 1 --publishers 20 --topic 'cl/%i' --sub-topic 'cl/+' --rate "$eighth" --duration "$c13_dur" --json 2>/dev/null | tail -1)
record "$S13" eighth_load_msgs_per_sec "each" "$(python3 -c "print($eighth * 20)")"
record "$S13" eighth_load_p50_us "same node" "$(field "$same_light" latency_us.p50)"
record "$S13" eighth_load_p50_us "node A to node B" "$(field "$cross_light" latency_us.p50)"
record "$S13" eighth_load_p50_us "added by the hop" "$(python3 -c "print($(field "$cross_light" latency_us.p50) - $(field "$same_light" latency_us.p50))")"

route=$("$BENCH" route --pub-host "$C" --sub-host "$A" --rounds "$($smoke && echo 3 || echo 30)" --json 2>/dev/null | tail -1)
echo "   route convergence: $route" >&2
record "7. new subscription on A reaches publishes on C" route_p50_us "vibemq" "$(field "$route" route_us.p50)"
record "7. new subscription on A reaches publishes on C" route_p99_us "vibemq" "$(field "$route" route_us.p99)"
record "7. new subscription on A reaches publishes on C" failed "vibemq" "$(field "$route" failed)"

$smoke && { echo "bench smoke: ok"; cat "$results"; exit 0; }

mkdir -p target && cp "$results" target/bench-results.tsv
cp BENCHMARKS.md target/BENCHMARKS.previous.md 2>/dev/null || true
python3 scripts/bench_report.py "$results" "$("$MOSQUITTO" -h 2>&1 | head -1)" "$(git rev-parse --short HEAD)" "$DUR" target/BENCHMARKS.previous.md "$notes" > BENCHMARKS.md
echo "wrote BENCHMARKS.md"
