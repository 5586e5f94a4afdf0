#!/usr/bin/env bash
# Checks deploy/leadsync.service and what the package installs beside it:
# * `systemd-analyze verify` passes and `systemd-analyze security --offline=true` scores
#   2.0 or lower;
# * a configuration error stops the service for good: no ExecStartPre= (its failures are
#   restarted), RestartPreventExitStatus=78, and Restart= bounded by StartLimitBurst=;
# * `systemctl reload` checks the configuration before it signals the daemon;
# * EnvironmentFile=-/etc/default/leadsync, and the file the package ships for it;
# * the spool folder: the unit joins leadsync-spool and may write /var/spool/leadsync, the
#   tmpfiles.d snippet creates it 2770 root:leadsync-spool (tried in a scratch root), the
#   shipped configuration reads it, and the maintainer scripts are valid sh.
# Usage: deploy/verify-unit.sh PATH-TO-leadsync-BINARY
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "${1:?path to the leadsync binary}")"
unit="$here/leadsync.service"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAILED: $*"; exit 1; }

# verify checks that ExecStart= programs exist: point them at the built binary. It also
# looks up Documentation=man:leadsync(1): give it the page the package installs.
sed "s#/usr/bin/leadsync#${bin}#g" "$unit" > "$work/leadsync.service"
mkdir -p "$work/man/man1"
"$bin" man | gzip -9n > "$work/man/man1/leadsync.1.gz"
out="$(MANPATH="$work/man" systemd-analyze verify "$work/leadsync.service" 2>&1 || true)"
if [ -n "$out" ]; then
  echo "systemd-analyze verify failed:"; echo "$out"; exit 1
fi
echo "systemd-analyze verify: ok"
score="$(systemd-analyze security --offline=true "$work/leadsync.service" 2>&1 | sed -n 's/.*Overall exposure level for leadsync.service: \([0-9.]*\).*/\1/p')"
echo "systemd-analyze security --offline=true: exposure ${score:-?}"
awk -v s="${score:-99}" 'BEGIN { exit !(s <= 2.0) }' || fail "exposure above 2.0"

# The unit's own lines (no comments), and which section each is in.
directives="$(awk '/^\[/ { section = $0; next } /^[A-Za-z]/ { print section $0 }' "$unit")"
has() { grep -qxF -- "$1" <<<"$directives" || fail "$unit lacks $1"; }
grep -q '^\[Service\]ExecStartPre=' <<<"$directives" \
  && fail "ExecStartPre= is back: its failures are restarted every RestartSec= (run checks the configuration itself)"
has '[Service]RestartPreventExitStatus=78'
grep -q '^\[Unit\]StartLimitIntervalSec=' <<<"$directives" || fail "no StartLimitIntervalSec= in [Unit]"
grep -q '^\[Unit\]StartLimitBurst=[1-9]' <<<"$directives" || fail "no StartLimitBurst= in [Unit]"
reload="$(sed -n 's/^\[Service\]ExecReload=//p' <<<"$directives")"
[ "$reload" = "/usr/bin/leadsync --config /etc/leadsync/leadsync.toml check
/bin/kill -HUP \$MAINPID" ] || fail "ExecReload= must run check, then kill -HUP \$MAINPID; it is: $reload"
echo "unit: no ExecStartPre, exit 78 not restarted, restarts bounded, reload checks first: ok"

has '[Service]EnvironmentFile=-/etc/default/leadsync'
test -f "$here/default/leadsync" || fail "deploy/default/leadsync (shipped as /etc/default/leadsync) is missing"
if grep -v '^#' "$here/default/leadsync" | grep -q '[^[:space:]]'; then
  fail "deploy/default/leadsync must stay all comments (an example)"
fi
echo "unit: EnvironmentFile=-/etc/default/leadsync, example shipped: ok"

has '[Service]SupplementaryGroups=leadsync-spool'
has '[Service]ReadWritePaths=/var/spool/leadsync'
grep -q '^dir = "/var/spool/leadsync"$' "$here/etc/leadsync.toml" \
  || fail "deploy/etc/leadsync.toml does not read the spool folder /var/spool/leadsync"
# The tmpfiles.d snippet, applied to a scratch root that knows the group.
mkdir -p "$work/root/etc"
echo 'root:x:0:' > "$work/root/etc/group"
echo 'leadsync-spool:x:999:' >> "$work/root/etc/group"
echo 'root:x:0:0:root:/root:/bin/sh' > "$work/root/etc/passwd"
systemd-tmpfiles --create --root="$work/root" "$here/tmpfiles.d/leadsync.conf" \
  || fail "systemd-tmpfiles --create failed on deploy/tmpfiles.d/leadsync.conf"
for d in /var/spool/leadsync /var/spool/leadsync/processed /var/spool/leadsync/rejected; do
  got="$(stat -c '%a %u %g' "$work/root$d" 2>/dev/null || true)"
  [ "$got" = "2770 0 999" ] || fail "tmpfiles.d made $d '$got', expected '2770 0 999' (2770 root:leadsync-spool)"
done
for s in "$here"/debian/*; do
  sh -n "$s" || fail "$s is not valid sh"
  grep -q '^#DEBHELPER#$' "$s" || fail "$s lacks the #DEBHELPER# line cargo-deb fills in"
done
grep -q 'leadsync-spool' "$here/debian/postinst" || fail "postinst does not create the group leadsync-spool"
echo "spool: /var/spool/leadsync 2770 root:leadsync-spool (tmpfiles.d), unit and config agree, maintainer scripts parse: ok"
