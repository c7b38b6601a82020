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
# Every RUN fails when any command of a pipeline fails.
SHELL ["/bin/bash", "-euo", "pipefail", "-c"]
ENV RUSTUP_HOME=/usr/local/rustup CARGO_HOME=/usr/local/cargo PATH=/usr/local/cargo/bin:$PATH
# rustup-init straight from static.rust-lang.org (the host sh.rustup.rs only
# redirects there), checked against its published SHA-256.
RUN dist="https://static.rust-lang.org/rustup/dist/$(uname -m)-unknown-linux-gnu" \
 && curl --proto '=https' --tlsv1.2 -sSfo /tmp/rustup-init "$dist/rustup-init" \
 && echo "$(curl --proto '=https' --tlsv1.2 -sSf "$dist/rustup-init.sha256" | cut -d' ' -f1)  /tmp/rustup-init" \
    | sha256sum --check --strict - \
 && chmod +x /tmp/rustup-init \
 && /tmp/rustup-init -y --no-modify-path --profile minimal --default-toolchain 1.95.0 \
 && rm /tmp/rustup-init
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
