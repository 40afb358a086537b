# One entry point for humans and CI. `make demo` and `make test` install their
# own prerequisites (scripts/bootstrap.sh is idempotent).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Privileged tests build whole network topologies; two at a time fits 2 cores.
TEST_THREADS ?= 2

.PHONY: all bootstrap bootstrap-bench build demo test lint bench bench-cni bench-lb bench-socklb bench-dns bench-k8s bench-net clean

all: build

bootstrap:
	@bash scripts/bootstrap.sh

bootstrap-bench:
	@bash scripts/bootstrap.sh bench

build: bootstrap
	$(CARGO) build --release --workspace --bins

demo: build
	@bash scripts/demo.sh

test: build
	$(CARGO) test --release --workspace -- --test-threads=$(TEST_THREADS)

# Formatting, then clippy twice (as aya-template's test.sh does): the host
# crates, then the eBPF crate alone, which only builds for the BPF target on
# nightly with build-std. Both read the lint policy in Cargo.toml.
lint: bootstrap
	$(CARGO) fmt --all -- --check
	cd ebpf/programs && $(CARGO) fmt -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings
	cd ebpf/programs && env -u RUSTUP_TOOLCHAIN rustup run nightly cargo clippy --release \
		--target bpfel-unknown-none -Z build-std=core -- -D warnings

bench: bench-cni bench-lb bench-dns bench-k8s bench-net

bench-cni: build bootstrap-bench
	@bash bench/cni/run.sh

bench-lb: build bootstrap-bench
	@bash bench/lb/run.sh

# Only the socket-LB figures of bench-lb (a minute).
bench-socklb: build bootstrap-bench
	@mkdir -p bench/results && python3 bench/lb/socklb.py bench/results/socklb.json

bench-dns: build bootstrap-bench
	@bash bench/dns/run.sh

# The agent and ferry-dns on the (fake) Kubernetes API at 10,000 and
# 100,000 Services x 10 endpoints, beside the YAML directory (~10 min).
bench-k8s: build
	@./target/release/ferry-bench-k8s --out bench/results/k8s.json

# Pods across nodes (host-gw, VXLAN), egress masquerade and remote-backend
# Services on three node namespaces, beside hand-built kernel routes, a kernel
# VXLAN device and an nftables masquerade rule (~6 min).
bench-net: build bootstrap-bench
	@bash bench/net/run.sh

clean:
	$(CARGO) clean

# The OCI image: static ferry, ferry-agent, ferry-dns and ferryctl at /usr/bin/
# in a FROM scratch image, built offline with podman (image/build.sh, which
# says how). Tagged ghcr.io/ferry-project/ferry:<workspace version>, the
# image the manifests name; IMAGE=registry/name:tag make image for another.
.PHONY: image
image: bootstrap
	@bash image/build.sh
