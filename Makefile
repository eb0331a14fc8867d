# goworker — see README.md. `make test` installs what the tests need.
CARGO ?= cargo

.PHONY: build run test deps bench bench-http bench-redis lint ci doc

build:
	$(CARGO) build --release

# The service on the embedded default config (config.example.yaml).
run:
	$(CARGO) run --release -- run

# Installs the system packages the tests use (when missing), then tests.
test: deps
	$(CARGO) test

deps:
	./scripts/install-deps.sh

bench: deps
	$(CARGO) bench

# HTTP provider vs a bare tiny_http server (see BENCHMARKS.md).
bench-http:
	$(CARGO) bench --bench http

# End-to-end redis provider benchmark (BENCHMARKS.md, "Redis provider").
bench-redis: deps
	./scripts/bench-redis.sh

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

ci: lint test doc
