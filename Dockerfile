# Small static images for the webhook and the controller, running as non-root.
#   docker build --target webhook -t taskrun-webhook .
#   docker build --target controller -t taskrun-controller .
# For other platforms (amd64, arm64) with buildx, each built natively (QEMU when emulated):
#   docker buildx build --platform linux/amd64,linux/arm64 --target webhook -t ... .
FROM rust:1.95-bookworm AS build
# Set by BuildKit to the platform being built; the build stage runs on that platform.
ARG TARGETARCH
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl ;; \
      arm64) echo aarch64-unknown-linux-musl ;; \
      *) echo "unsupported TARGETARCH '$TARGETARCH': amd64 or arm64" >&2; exit 1 ;; \
    esac > /rust-target \
 && apt-get update && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/* \
 && rustup target add "$(cat /rust-target)"
WORKDIR /src
COPY . .
# `sharing=locked`: the platforms of one buildx build share the caches, one at a time (for the
# registry too: cargo's package-cache lock lives in CARGO_HOME, outside the mount, so it cannot
# keep two builds from unpacking the same crate at once).
# CC_<target>: the C code (ring, mimalloc) for the musl target is compiled with musl-gcc
# (cc-rs would look for aarch64-linux-musl-gcc, which musl-tools does not install).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    target="$(cat /rust-target)" \
 && env "CC_$(echo "$target" | tr - _)=musl-gcc" \
      cargo build --release --locked --target "$target" \
      -p taskrun-webhook -p taskrun-controller \
 && mkdir -p /out \
 && cp "target/$target/release/taskrun-webhook" \
       "target/$target/release/taskrun-controller" /out/

FROM gcr.io/distroless/static-debian12:nonroot AS webhook
COPY --from=build /out/taskrun-webhook /taskrun-webhook
USER 65532:65532
ENTRYPOINT ["/taskrun-webhook"]

FROM gcr.io/distroless/static-debian12:nonroot AS controller
COPY --from=build /out/taskrun-controller /taskrun-controller
USER 65532:65532
ENTRYPOINT ["/taskrun-controller"]
