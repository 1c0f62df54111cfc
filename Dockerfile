# VibeMQ image for hosts that reach a registry: `docker build -t vibemq:0.1.0 .`
# (Without a registry, scripts/build-image.sh makes the same image offline.)
FROM rust:1-bookworm AS build
WORKDIR /src
# Dependencies first, in a layer of their own: it is rebuilt only when Cargo.toml or
# Cargo.lock change, not on every change to the sources (stub targets stand in for them).
COPY Cargo.toml Cargo.lock ./
COPY .cargo .cargo
RUN mkdir -p src/bin/vibemq-bench \
    && echo 'fn main() {}' > src/main.rs \
    && echo 'fn main() {}' > src/bin/vibemq-bench/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin vibemq \
    && rm -rf src
COPY config config
COPY src src
# The stubs' build outputs are older than the sources: touch so cargo rebuilds the crate.
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --bin vibemq \
    && strip --strip-debug target/release/vibemq

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-create-home vibemq \
    && mkdir -p /etc/vibemq /var/lib/vibemq /var/lib/vibemq-secret \
    && chown 10001:10001 /var/lib/vibemq /var/lib/vibemq-secret
COPY --from=build /src/target/release/vibemq /usr/local/bin/vibemq
COPY config/default.toml /etc/vibemq/vibemq.toml
USER 10001:10001
# MQTT, gossip (UDP), peer relay, HTTP (health, readiness, metrics, API).
EXPOSE 1883 7946/udp 7947 9090
HEALTHCHECK --interval=10s --timeout=5s CMD ["/usr/local/bin/vibemq", "probe", "/ready"]
ENTRYPOINT ["/usr/local/bin/vibemq"]
CMD ["--config", "/etc/vibemq/vibemq.toml"]
