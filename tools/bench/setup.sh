#!/usr/bin/env bash
# What `make bench` needs besides Envoy and the module: nginx and wrk (Debian
# packages, installed when missing) and tools/extproc-sink (built in its own
# target dir; its build time is printed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

# nginx-light is enough; newer Debian releases only ship `nginx`.
nginx_pkg=nginx
if apt-cache show nginx-light >/dev/null 2>&1; then
  nginx_pkg=nginx-light
fi
command -v nginx >/dev/null 2>&1 || bash tools/ensure_packages.sh "$nginx_pkg"
command -v wrk >/dev/null 2>&1 || bash tools/ensure_packages.sh wrk
for tool in nginx wrk; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "bench: $tool is missing and could not be installed" >&2
    exit 1
  fi
done

start=$(date +%s)
cargo build --release --quiet --manifest-path tools/extproc-sink/Cargo.toml \
  --target-dir tools/extproc-sink/target
echo "bench: tools/extproc-sink built in $(($(date +%s) - start)) s"
