#!/usr/bin/env bash
# Installs the Debian packages the test suite needs, when they are missing.
set -euo pipefail

need=()
command -v redis-server >/dev/null 2>&1 || need+=(redis-server)
# systemd-analyze verifies packaging/goworker.service.
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
# The producer snippets of docs/producers.md run with Debian's Python and
# its redis client.
/usr/bin/python3 -c 'import redis' >/dev/null 2>&1 || need+=(python3 python3-redis)
# `make deb` (and its test) packages with cargo-deb, from crates.io.
if ! command -v cargo-deb >/dev/null 2>&1; then
  echo "install-deps: installing cargo-deb"
  cargo install cargo-deb --locked --quiet
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "install-deps: installing ${need[*]}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
