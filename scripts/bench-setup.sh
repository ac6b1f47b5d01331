#!/usr/bin/env bash
# Installs what the benchmarks need beyond node and git: nginx and fcgiwrap, which serve the
# reference `git http-backend` in `npm run bench:clone`. Idempotent: does nothing when both are
# there. Needs root (apt-get), as on the project's machines.
set -euo pipefail

missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v fcgiwrap >/dev/null 2>&1 || [ -x /usr/sbin/fcgiwrap ] || missing+=(fcgiwrap)

if [ ! -x /usr/lib/git-core/git-http-backend ] && ! printf '%s\n' "${missing[@]}" | grep -qx git; then
  missing+=(git)
fi

if [ ${#missing[@]} -eq 0 ]; then
  echo "bench-setup: nginx, fcgiwrap and git-http-backend are installed"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "bench-setup: need root to install: ${missing[*]}" >&2
  exit 1
fi

echo "bench-setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
# --no-install-recommends keeps nginx from pulling extra modules; policy-rc.d keeps the package's
# own nginx service from being started (the benchmark runs its own instance on a free port).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"
  chmod +x "$policy"
  created_policy=1
fi
trap 'if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi' EXIT
apt-get install -y -q --no-install-recommends "${missing[@]}"

for bin in nginx fcgiwrap; do
  command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ] || { echo "bench-setup: $bin still missing" >&2; exit 1; }
done
echo "bench-setup: done"
