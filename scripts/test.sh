#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs what the tests need when it is missing
# (mosquitto-clients, dnsmasq-base, haproxy, tcpdump, promtool, paho-mqtt, the deployment validators, cargo-fuzz), then formatting,
# lints, the deployment checks, the Docker Compose test, a chaos run of the Compose cluster, a
# bounded fuzzing slice and every test (the cluster simulation's 200 seeds among them). Fails
# loudly; skips nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

apt_install() {
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        have sudo || { echo "FATAL: need root or sudo to install: $*" >&2; exit 1; }
        sudo="sudo"
    fi
    have apt-get || { echo "FATAL: no apt-get here; install these yourself: $*" >&2; exit 1; }
    log "installing $*"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# mosquitto-clients: interop tests. dnsmasq-base: the DNS server of the discovery tests
# (the binary only; it starts no system service).
missing=()
{ have mosquitto_pub && have mosquitto_sub; } || missing+=(mosquitto-clients)
# mosquitto: its mosquitto_passwd writes the password files the auth tests read.
have mosquitto_passwd || missing+=(mosquitto)
# openssl makes the TLS tests' certificates.
have openssl || missing+=(openssl)
have dnsmasq || [ -x /usr/sbin/dnsmasq ] || missing+=(dnsmasq-base)
# haproxy: the load balancer sending PROXY protocol headers in the listener tests.
have haproxy || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
# tcpdump: the capture showing peer links carry nothing in clear.
have tcpdump || [ -x /usr/bin/tcpdump ] || missing+=(tcpdump)
# prometheus: its promtool checks the alert rules of monitoring/ (scripts/check-deploy.py).
have promtool || missing+=(prometheus)
if [ ${#missing[@]} -gt 0 ]; then
    apt_install "${missing[@]}"
fi
export PATH="$PATH:/usr/sbin"
for tool in mosquitto_pub mosquitto_sub mosquitto_passwd openssl dnsmasq haproxy tcpdump promtool stdbuf cargo python3 docker docker-compose; do
    have "$tool" || { echo "FATAL: $tool is required by the tests and is not installed" >&2; exit 1; }
done
# The offline validators of the deployment files, and paho-mqtt (the Eclipse Python client
# of the WebSocket and PROXY protocol tests), from PyPI.
if ! python3 -c 'import kubernetes_validate, check_jsonschema, paho.mqtt' 2>/dev/null; then
    log "installing kubernetes-validate, check-jsonschema and paho-mqtt"
    python3 -m pip install --quiet kubernetes-validate check-jsonschema 'paho-mqtt>=2,<3' \
        || { echo "FATAL: cannot install kubernetes-validate / check-jsonschema / paho-mqtt from PyPI" >&2; exit 1; }
fi
docker info >/dev/null 2>&1 || { echo "FATAL: the Docker Engine is not reachable (docker info fails)" >&2; exit 1; }

log "cargo fmt --check"
cargo fmt --all -- --check
(cd fuzz && cargo fmt -- --check)

log "cargo clippy --all-targets -D warnings"
cargo clippy --all-targets --quiet -- -D warnings

# Compiling is most of this script's time and the Docker steps below mostly wait, so the test
# binaries, cargo-fuzz (when missing) and the fuzz targets build in the background meanwhile. Debug and release
# builds lock separately, so this does not hold up the image's release build.
log "building the test binaries in the background"
background_log=$(mktemp)
(
    if cargo nextest --version >/dev/null 2>&1; then
        cargo nextest run --no-run --cargo-quiet
    else
        cargo test --no-run --quiet
    fi
    cargo build --quiet --bin vibemq --bin vibemq-bench
    if ! cargo fuzz --version >/dev/null 2>&1; then
        cargo install cargo-fuzz --locked --quiet
    fi
    # The fuzz targets too (their own target directory); scripts/fuzz.sh then only runs them.
    (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz build -s none -O)
) >"$background_log" 2>&1 &
background=$!
# Should a step below fail, the background build stops with the script.
trap 'pkill -P "$background" 2>/dev/null; kill "$background" 2>/dev/null; true' EXIT

log "docker compose: the README's steps against the real engine"
bash scripts/compose-test.sh

log "chaos: the Compose cluster under load and faults for ${CHAOS_SECONDS:-60}s (scripts/chaos.sh SECONDS for longer)"
bash scripts/chaos.sh "${CHAOS_SECONDS:-60}"

log "waiting for the background build"
if ! wait "$background"; then
    cat "$background_log" >&2
    echo "FATAL: building the tests or the fuzz targets (or installing cargo-fuzz) failed; its output is above" >&2
    exit 1
fi
trap - EXIT

log "deployment files (kubernetes.yaml, monitoring/, docker-compose.yml) against the binary"
python3 scripts/check-deploy.py target/debug/vibemq

log "fuzzing: each target for ${FUZZ_SECONDS:-60}s (scripts/fuzz.sh SECONDS for longer)"
bash scripts/fuzz.sh "${FUZZ_SECONDS:-60}"

log "tests"
if cargo nextest --version >/dev/null 2>&1; then
    profile=default
    [ "${CI:-}" = "true" ] && profile=ci
    # nextest's summary must stay the last line: CI reads it to count the tests run.
    cargo nextest run --profile "$profile"
else
    cargo test
fi
