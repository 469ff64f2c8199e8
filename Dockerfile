# Small static images for the webhook and the controller, running as non-root.
#   docker build --target webhook -t taskrun-webhook .
#   docker build --target controller -t taskrun-controller .
FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --target x86_64-unknown-linux-musl \
      -p taskrun-webhook -p taskrun-controller \
 && mkdir -p /out \
 && cp target/x86_64-unknown-linux-musl/release/taskrun-webhook \
       target/x86_64-unknown-linux-musl/release/taskrun-controller /out/

FROM gcr.io/distroless/static-debian12:nonroot AS webhook
COPY --from=build /out/taskrun-webhook /taskrun-webhook
USER 65532:65532
ENTRYPOINT ["/taskrun-webhook"]

FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/taskrun-controller /taskrun-controller
USER 65532:65532
ENTRYPOINT ["/taskrun-controller"]
