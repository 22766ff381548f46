# syntax=docker/dockerfile:1
# drainer's image, for Docker/Buildah/Podman/kaniko users:
#
#   docker build -t drainer:0.1.0 --build-arg REVISION=$(git rev-parse HEAD) .
#
# Two stages: a Rust build, then a scratch image holding exactly the files scripts/image puts
# there (the release binary stripped of its debug info, its loader and the glibc libraries
# `ldd` names, CA certificates, /etc/passwd and /etc/group), so this image and the one the
# tests run (scripts/image, without a daemon) are the same set of files. No shell, no package
# manager; runs as 65532:65532 (drainer); about 17 MiB compressed (deploy/README.md).
#
# The build stage is Debian bookworm: the image's glibc is bookworm's, whatever the builder
# machine runs.
ARG RUST_VERSION=1.95

FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
ARG REVISION=unknown
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
    && DRAINER_REVISION="$REVISION" scripts/image --rootfs /rootfs --binary target/release/drainer \
    && test "$(/rootfs/usr/local/bin/drainer --version)" = "drainer $(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"

FROM scratch
COPY --from=build /rootfs/ /
COPY --from=build --chown=65532:65532 /rootfs/var/lib/drainer/ /var/lib/drainer/
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="drainer" \
      org.opencontainers.image.description="Rescues the data that scaled-down stateful pods leave behind" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.source="https://github.com/drainer/drainer" \
      org.opencontainers.image.url="https://github.com/drainer/drainer" \
      org.opencontainers.image.documentation="https://github.com/drainer/drainer/tree/main/deploy" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="the drainer authors"
ENV PATH=/usr/local/bin:/usr/bin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /var/lib/drainer
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/drainer"]
CMD ["--help"]
