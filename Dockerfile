# inboxd: the daemon and the example plugins, built from source; runs as non-root.
# docker build -t inboxd . && docker run -e RABBITMQ_URI=amqp://u:p@rabbit:5672/%2f inboxd
# The build steps are those of the README: `cargo build --release -p inboxd` and `plugins/build.sh`.

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip2
COPY . .
RUN cargo build --release --locked -p inboxd \
 && ./plugins/build.sh

FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --home-dir /var/lib/inboxd --create-home inboxd \
 && mkdir -p /etc/inboxd /var/lib/inboxd/plugins /var/lib/inboxd/cache /var/lib/inboxd/store \
 && chown -R inboxd:inboxd /var/lib/inboxd
COPY --from=build /src/target/release/inboxd /usr/local/bin/inboxd
COPY --from=build --chown=inboxd:inboxd /src/target/plugins/ /var/lib/inboxd/plugins/
COPY examples/inboxd.docker.toml /etc/inboxd/inboxd.toml
USER 10001:10001
ENV INBOXD_CONFIG=/etc/inboxd/inboxd.toml
EXPOSE 9464
HEALTHCHECK --interval=15s --timeout=5s --start-period=20s --retries=3 \
  CMD ["inboxd", "healthcheck", "--address", "127.0.0.1:9464", "--path", "/readyz"]
ENTRYPOINT ["inboxd"]
CMD ["run"]
