#!/usr/bin/env bash
# Checks deploy/quotegw.service as systemd will read it, with no running systemd:
#   1. `systemd-analyze verify`: every directive, value, section and command parses, and the
#      commands exist. verify reports most mistakes (a misspelled key, a bad value, an unknown
#      section) as a line on stderr and still exits 0, so any output line naming the unit fails.
#   2. Every unit it names in Wants=, After=, WantedBy=... exists on this machine (verify says
#      nothing about `Wants=network-onlin.target`).
#   3. `systemd-analyze security --offline=yes`: the exposure score is at most the threshold below,
#      and no check is exposed beyond the list of accepted ones below (each with its reason).
#
#   tests/deploy/check-unit.sh [UNIT]      (UNIT: deploy/quotegw.service unless given)
#
# Installs Debian's systemd (which ships systemd-analyze) when it is missing; nothing is started.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() {
  echo "deploy unit check FAILED: $*" >&2
  exit 1
}

unit="${1:-deploy/quotegw.service}"
[ -f "$unit" ] || die "'$unit' does not exist"
[ "$(basename "$unit")" = quotegw.service ] || die "'$unit': the unit file must be named quotegw.service (systemd takes the unit's name from it)"

# The exposure score (0 to 10; systemd calls up to 0.9 "SAFE", up to 4.9 "OK") above which the check
# fails, in tenths as --threshold takes it. The unit scores 1.2 on Debian 12's systemd 252: what is
# left is what a gateway serving TCP from the host's network and root must keep (the accepted list
# below). 1.5 fails on losing any of the lines that weigh most (CapabilityBoundingSet= → 2.9,
# SystemCallFilter= → 2.6, RestrictNamespaces= → 1.9, RestrictAddressFamilies= → 1.6) and leaves 0.3
# for another systemd version's weights; the accepted list catches each smaller line.
threshold=15
threshold_shown="$((threshold / 10)).$((threshold % 10))"

# Checks the unit may fail, by their name in `systemd-analyze security`, and why:
accepted=(
  "PrivateNetwork="                           # it serves clients and reaches upstreams and NATS
  "IPAddressDeny="                            # clients come from anywhere: restrict at the firewall
  "RestrictAddressFamilies=~AF_(INET|INET6)"  # TCP
  "RestrictAddressFamilies=~AF_UNIX"          # the name service (nscd, systemd-resolved's varlink)
  "RootDirectory=/RootImage="                 # an installed binary run from the host's root, read-only
  "DeviceAllow="                              # char-rtc:r, which ProtectClock=yes itself adds
  "SystemCallFilter=~@resources"              # setrlimit: the soft open-file limit raised to the hard
)

if ! command -v systemd-analyze >/dev/null; then
  echo "deploy: installing Debian systemd for systemd-analyze" >&2
  tests/support/apt-install.sh /usr/bin/systemd-analyze --no-install-recommends systemd \
    || die "systemd-analyze could not be installed (see above)"
  command -v systemd-analyze >/dev/null || die "the systemd package installed no systemd-analyze"
fi
echo "systemd-analyze: $(systemd-analyze --version | head -n 1)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# verify fails when ExecStart's binary is not an executable file, and /usr/local/bin/quotegw exists
# only where the gateway is installed. The copy it checks differs from the unit in that one path
# only: the binary is looked for under $work instead of /, where an executable stub stands (verify
# never runs it). `verify --root=` would move every path, also those of the units verify loads for
# the default dependencies (sysinit.target, ...) and of /bin/kill, so that the root would need a copy
# of the machine's systemd; this way everything else is checked against the real machine.
bin=/usr/local/bin/quotegw
[ "$(grep -c "^ExecStart=$bin " "$unit")" = 1 ] \
  || die "$unit: ExecStart= must run $bin (where deploy/README.md installs it), in exactly one line"
mkdir -p "$work/checked" "$work$(dirname "$bin")"
printf '#!/bin/sh\nexit 0\n' >"$work$bin"
chmod 0755 "$work$bin"
checked="$work/checked/quotegw.service"
sed "s|^ExecStart=$bin |ExecStart=$work$bin |" "$unit" >"$checked"
[ "$(diff "$unit" "$checked" | grep -c '^>')" = 1 ] || die "the checked copy differs from $unit in more than ExecStart="

# 1. verify. No output line naming the unit is known to be harmless on systemd 252; should a newer
# systemd print one, exempt it here by its exact text, with the reason. Lines about other units (the
# machine's own, pulled in as dependencies) are shown but are not this unit's fault, and
# --recursive-errors=no keeps them out of the exit status too.
verify_rc=0
verify_out="$(systemd-analyze verify --recursive-errors=no "$checked" 2>&1)" || verify_rc=$?
verify_out="${verify_out//"$checked"/"$unit"}"
ours="$(grep -i 'quotegw' <<<"$verify_out" || true)"
others="$(grep -vi 'quotegw' <<<"$verify_out" | grep -v '^$' || true)"
[ -z "$others" ] || printf 'note: systemd-analyze verify about other units (not counted):\n%s\n' "$others"
[ -z "$ours" ] || die "systemd-analyze verify $unit says:
$ours"
[ "$verify_rc" = 0 ] || die "systemd-analyze verify $unit exited $verify_rc:
$verify_out"
echo "ok - systemd-analyze verify $unit: no error, no warning"

# 2. The units it names exist here (in systemd's unit path), so a misspelled one does not pass.
unit_dirs="$(systemd-analyze unit-paths)"
named="$(sed -nE 's/^(Wants|Requires|Requisite|BindsTo|PartOf|Upholds|After|Before|Conflicts|WantedBy|RequiredBy|UpheldBy|Also)=//p' "$unit" | tr ' ' '\n' | grep -v '^$' | sort -u)"
for name in $named; do
  found=""
  for dir in $unit_dirs; do
    [ -e "$dir/$name" ] && found="$dir/$name" && break
  done
  [ -n "$found" ] || die "$unit names $name, which is no unit in systemd's unit path ($(tr '\n' ' ' <<<"$unit_dirs"))"
done
echo "ok - every unit $unit names exists: $(tr '\n' ' ' <<<"$named")"

# 3. security. --offline (systemd 250 and later) reads the file instead of asking PID 1.
if ! systemd-analyze security --help 2>&1 | grep -q -- '--offline'; then
  echo "SKIPPED - systemd-analyze security --offline: this systemd is older than 250 (Debian 12's is 252)"
  exit 0
fi
security_rc=0
security_out="$(systemd-analyze security --offline=yes --threshold="$threshold" "$checked" 2>&1)" || security_rc=$?
score="$(sed -nE 's/.*Overall exposure level for quotegw\.service: ([0-9.]+).*/\1/p' <<<"$security_out")"
[ -n "$score" ] || die "systemd-analyze security printed no exposure level:
$security_out"
exposed="$(systemd-analyze security --offline=yes --json=short "$checked" | python3 -c '
import json, sys
for check in json.load(sys.stdin):
    if not check["set"]:
        print(check["name"] + "\t" + (check["exposure"] or "0") + "\t" + check["description"])
')" || die "systemd-analyze security --offline=yes --json=short $unit failed (see above)"
unexpected=""
while IFS=$'\t' read -r name exposure description; do
  [ -n "$name" ] || continue
  ok=""
  for a in "${accepted[@]}"; do [ "$name" = "$a" ] && ok=1; done
  [ -n "$ok" ] || unexpected="$unexpected
    $name ($exposure): $description"
done <<<"$exposed"
problems=""
[ "$security_rc" = 0 ] || problems="
  exposure level $score is above $threshold_shown (systemd-analyze security exited $security_rc)"
[ -z "$unexpected" ] || problems="$problems
  exposed beyond the accepted list (in $0):$unexpected"
[ -z "$problems" ] || die "systemd-analyze security --offline=yes $unit:$problems"
echo "ok - systemd-analyze security --offline: exposure $score (at most $threshold_shown), exposed only where accepted: $(cut -f1 <<<"$exposed" | tr '\n' ' ')"
