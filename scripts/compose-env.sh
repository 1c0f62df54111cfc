# Sourced by the scripts that bring docker-compose.yml up (compose-test.sh, chaos.sh): the
# open-file limit the Compose file asks for (VIBEMQ_NOFILE) can be no higher than the Docker
# daemon's own hard limit, which grants it; a daemon under systemd usually has 1048576 (the
# Compose file's default), one started otherwise may have less.
if [ -z "${VIBEMQ_NOFILE:-}" ]; then
    daemon_pid=$(pgrep -xo dockerd || true)
    if [ -n "$daemon_pid" ] && [ -r "/proc/$daemon_pid/limits" ]; then
        VIBEMQ_NOFILE=$(awk '/^Max open files/ {print $5}' "/proc/$daemon_pid/limits")
    fi
    case "${VIBEMQ_NOFILE:-}" in
        ''|*[!0-9]*) VIBEMQ_NOFILE=1048576 ;;
    esac
    [ "$VIBEMQ_NOFILE" -gt 1048576 ] && VIBEMQ_NOFILE=1048576
fi
export VIBEMQ_NOFILE
