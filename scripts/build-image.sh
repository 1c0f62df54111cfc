#!/usr/bin/env bash
# Builds the VibeMQ Docker image without a registry, tagged with the crate's version (the
# immutable tag kubernetes.yaml runs) and as vibemq:latest (or the one tag given): the release binary from this
# checkout plus the shared libraries it links (as ldd lists them), a non-root user, on an
# empty base, loaded with `docker import`. Where a registry is reachable, `docker build .`
# (the Dockerfile) gives the same image from a Debian base.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -1)
image="${1:-vibemq:$version}"

cargo build --release --locked --bin vibemq
binary=target/release/vibemq

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc/vibemq" "$root/tmp" "$root/var/lib/vibemq" "$root/var/lib/vibemq-secret"
chmod 1777 "$root/tmp"
# The store's directory (persistence.dir in the deployment files), the node's user's: a volume
# mounted there starts with this owner.
# The same for the directory the Compose cluster's secret is made in (volume cluster-secret).
for dir in var/lib/vibemq var/lib/vibemq-secret; do
    chown 10001:10001 "$root/$dir" 2>/dev/null || chmod 1777 "$root/$dir"
done
cp "$binary" "$root/usr/local/bin/vibemq"
# The release profile keeps debug info for profiling; the image does not need it.
strip --strip-debug "$root/usr/local/bin/vibemq" 2>/dev/null || true
# Every library the binary needs, at the path the dynamic loader looks for it.
for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
done
echo 'root:x:0:0:root:/root:/sbin/nologin'$'\n''vibemq:x:10001:10001:vibemq:/nonexistent:/sbin/nologin' > "$root/etc/passwd"
echo 'root:x:0:'$'\n''vibemq:x:10001:' > "$root/etc/group"
echo 'hosts: files dns' > "$root/etc/nsswitch.conf"
cp config/default.toml "$root/etc/vibemq/vibemq.toml"

tar -C "$root" -c . | docker import \
    --change 'USER 10001:10001' \
    --change 'ENTRYPOINT ["/usr/local/bin/vibemq"]' \
    --change 'CMD ["--config", "/etc/vibemq/vibemq.toml"]' \
    --change 'EXPOSE 1883 7946/udp 7947 9090' \
    - "$image" >/dev/null
if [ -z "${1:-}" ]; then
    docker tag "$image" vibemq:latest
fi
echo "built $image ($(docker image inspect "$image" --format '{{.Size}}') bytes)"
