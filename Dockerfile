# syntax=docker/dockerfile:1
# The bitmig programs in one image; docker-compose.yml picks the command for each service.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds (BuildKit), so a code change rebuilds only the
# workspace's own crates; the binaries are copied out of the cache mount before the step ends.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bins \
 && mkdir -p /out \
 && cp target/release/bitmig-producer target/release/bitmig-consumer target/release/bitmig-compensator target/release/bitmig-rollover /out/

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin bitmig
COPY --from=build /out/ /usr/local/bin/
USER bitmig
