# One entry point for humans and CI. `make demo` and `make test` install their
# own prerequisites (scripts/bootstrap.sh is idempotent).
SHELL := /bin/bash
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
# Privileged tests build whole network topologies; two at a time fits 2 cores.
TEST_THREADS ?= 2

.PHONY: all bootstrap bootstrap-bench build demo test lint bench bench-cni bench-lb bench-dns clean

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

lint: bootstrap
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

bench: bench-cni bench-lb bench-dns

bench-cni: build bootstrap-bench
	@bash bench/cni/run.sh

bench-lb: build bootstrap-bench
	@bash bench/lb/run.sh

bench-dns: build bootstrap-bench
	@bash bench/dns/run.sh

clean:
	$(CARGO) clean
