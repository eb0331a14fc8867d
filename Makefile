# goworker — see README.md. `make test` installs what the tests need.
CARGO ?= cargo

.PHONY: build run test deps bench bench-http bench-disk bench-redis lint ci doc install deb

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

# The disk provider end to end against raw redb (BENCHMARKS.md).
bench-disk:
	$(CARGO) bench --bench disk

# End-to-end redis provider benchmark (BENCHMARKS.md, "Redis provider").
bench-redis: deps
	./scripts/bench-redis.sh

# Soak: kill -9 under load for SOAK_SECS per scenario (BENCHMARKS.md,
# "Reliability"); fails if an acknowledged job was lost, or if a job ran
# twice that no kill -9 explains. `make test` runs the same for 20 s each.
SOAK_SECS ?= 120
.PHONY: soak
soak: deps
	SOAK_SECS=$(SOAK_SECS) $(CARGO) test --test integration soak:: -- --nocapture --test-threads=1

lint:
	$(CARGO) fmt --check
	$(CARGO) clippy --all-targets -- -D warnings

doc:
	RUSTDOCFLAGS="-D warnings" $(CARGO) doc --no-deps

ci: lint test doc

# `make install`: the release binary to $(DESTDIR)$(PREFIX)/bin, its man page
# and shell completions under $(DESTDIR)$(PREFIX)/share, the systemd
# unit to $(DESTDIR)/etc/systemd/system (ExecStart follows PREFIX), and the
# example config to $(DESTDIR)/etc/goworker/config.yaml unless one is there.
# BIN=path installs an already built binary instead of building one.
PREFIX ?= /usr/local
DESTDIR ?=
TARGET_DIR ?= $(or $(CARGO_TARGET_DIR),target)
ifeq ($(origin BIN),undefined)
BIN := $(TARGET_DIR)/release/goworker
INSTALL_BUILD := build
endif

install: $(INSTALL_BUILD)
	install -D -m 0755 $(BIN) $(DESTDIR)$(PREFIX)/bin/goworker
	install -d -m 0755 $(DESTDIR)$(PREFIX)/share/man/man1 \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions \
		$(DESTDIR)$(PREFIX)/share/zsh/vendor-completions \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d
	$(BIN) man | gzip -9n > $(DESTDIR)$(PREFIX)/share/man/man1/goworker.1.gz
	$(BIN) completions bash > $(DESTDIR)$(PREFIX)/share/bash-completion/completions/goworker
	$(BIN) completions zsh > $(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_goworker
	$(BIN) completions fish > $(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/goworker.fish
	chmod 0644 $(DESTDIR)$(PREFIX)/share/man/man1/goworker.1.gz \
		$(DESTDIR)$(PREFIX)/share/bash-completion/completions/goworker \
		$(DESTDIR)$(PREFIX)/share/zsh/vendor-completions/_goworker \
		$(DESTDIR)$(PREFIX)/share/fish/vendor_completions.d/goworker.fish
	install -d -m 0755 $(DESTDIR)/etc/systemd/system
	sed 's|/usr/local/bin/goworker|$(PREFIX)/bin/goworker|' packaging/goworker.service \
		> $(DESTDIR)/etc/systemd/system/goworker.service
	chmod 0644 $(DESTDIR)/etc/systemd/system/goworker.service
	@if [ -e $(DESTDIR)/etc/goworker/config.yaml ]; then \
		echo "keeping $(DESTDIR)/etc/goworker/config.yaml"; \
	else \
		install -D -m 0644 config.example.yaml $(DESTDIR)/etc/goworker/config.yaml; \
	fi
	@echo "installed; next: systemctl daemon-reload && systemctl enable --now goworker"

# `make deb`: a Debian package (cargo-deb, installed when missing) of what
# `make install PREFIX=/usr` lays out: the binary, the unit (in
# /lib/systemd/system), the example config as the conffile
# /etc/goworker/config.yaml, the man page and completions.
# DEB_OUT=path names the .deb; BIN=path packages an already built binary;
# DEB_FLAGS=--fast trades size for speed (the tests use it).
DEB_OUT ?= $(TARGET_DIR)/debian
deb: $(INSTALL_BUILD)
	@command -v cargo-deb >/dev/null 2>&1 || $(CARGO) install cargo-deb --locked
	rm -rf target/deb-root
	$(MAKE) -s install DESTDIR=$(CURDIR)/target/deb-root PREFIX=/usr BIN=$(BIN)
	$(CARGO) deb --no-build $(DEB_FLAGS) --output $(DEB_OUT)
