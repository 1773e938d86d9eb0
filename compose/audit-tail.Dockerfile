# The consumer: built with the Rust image, run on a slim Debian.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY sql sql
RUN cargo build --release --locked --bin audit-tail

FROM debian:bookworm-slim
COPY --from=build /src/target/release/audit-tail /usr/local/bin/audit-tail
RUN mkdir -p /var/lib/audit-stream && chown nobody:nogroup /var/lib/audit-stream
USER nobody
VOLUME /var/lib/audit-stream
ENTRYPOINT ["audit-tail"]
CMD ["stream", "--out-dir", "/var/lib/audit-stream"]
