#!/usr/bin/env bash
# Usage: tools/ensure_packages.sh PKG...
#
# Installs the Debian/Ubuntu packages among PKG that are not installed yet,
# with apt-get, when running as root (or with passwordless sudo). Otherwise it
# only says what is missing and exits 0: the tests that need a package fail
# with their own message, so a non-root `make setup` still sets up the rest.
set -euo pipefail

if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "ensure_packages: not a Debian-like system; make sure these are installed: $*" >&2
  exit 0
fi

missing=()
for pkg in "$@"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
  apt=(env DEBIAN_FRONTEND=noninteractive apt-get)
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
  apt=(sudo -n env DEBIAN_FRONTEND=noninteractive apt-get)
else
  echo "ensure_packages: missing ${missing[*]}; install them as root:" \
    "apt-get install -y ${missing[*]}" >&2
  exit 0
fi

echo "ensure_packages: installing ${missing[*]}"
# A fresh machine may have no package lists yet: refresh them only when the
# install cannot find what it needs.
if ! "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null; then
  "${apt[@]}" update -q </dev/null
  "${apt[@]}" install -y -q --no-install-recommends "${missing[@]}" </dev/null
fi
