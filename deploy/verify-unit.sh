#!/usr/bin/env bash
# Checks deploy/leadsync.service: `systemd-analyze verify` must pass and
# `systemd-analyze security --offline=true` must score 2.0 or lower.
# Usage: deploy/verify-unit.sh PATH-TO-leadsync-BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:?path to the leadsync binary}")"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# verify checks that ExecStart= programs exist: point them at the built binary.
sed "s#/usr/bin/leadsync#${bin}#g" "$here/leadsync.service" > "$work/leadsync.service"
out="$(systemd-analyze verify "$work/leadsync.service" 2>&1 || true)"
if [ -n "$out" ]; then
  echo "systemd-analyze verify failed:"; echo "$out"; exit 1
fi
echo "systemd-analyze verify: ok"
score="$(systemd-analyze security --offline=true "$work/leadsync.service" 2>&1 | sed -n 's/.*Overall exposure level for leadsync.service: \([0-9.]*\).*/\1/p')"
echo "systemd-analyze security --offline=true: exposure ${score:-?}"
awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }' || { echo "exposure above 2.0"; exit 1; }
