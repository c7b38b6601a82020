# flow-agent's image: `docker build -t flow-agent .` from the repository root.
#
# The build stage uses the project's own set-up (`cargo xtask setup
# --build-only`: nightly with rust-src, LLVM from Debian, bpf-linker), so the
# image is built exactly as CI builds. The runtime stage holds the binary and
# CA certificates only: rustls, no OpenSSL, no shell tools needed.

FROM debian:bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl build-essential pkg-config git \
 && rm -rf /var/lib/apt/lists/*
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY . .
RUN cargo xtask setup --build-only \
 && cargo build --release --locked --package flow-agent --bin flow-agent \
 && strip target/release/flow-agent

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/flow-agent /usr/local/bin/flow-agent
# Root, with every capability dropped but BPF, NET_ADMIN and PERFMON in the
# DaemonSet: Kubernetes gives a non-root user no ambient capabilities, so the
# three would not be effective for it (deploy/README.md).
USER 0:0
ENTRYPOINT ["/usr/local/bin/flow-agent"]
CMD ["run", "--config", "/etc/flow-agent/flow-agent.yaml"]
