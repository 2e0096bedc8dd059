#!/usr/bin/env bash
# Installs Debian packages for a test (or a bench script), once, when FILE (what the package provides) is missing:
#   tests/support/apt-install.sh FILE PACKAGE [apt-get install options...]
# Test binaries run at the same time (web, dashboards, scale-out), and two apt-get runs on a fresh
# machine collide on /var/lib/apt/lists/lock, which apt's DPkg::Lock::Timeout does not wait for
# (CI failed that way). So every install of ours takes one flock first and checks FILE again under it;
# apt's own lock timeout and a few retries cover an apt-get that is not ours.
set -euo pipefail
file="$1"
shift
[ -e "$file" ] && exit 0
[ "$(id -u)" = 0 ] || { echo "apt-install: $file is missing and installing it needs root: apt-get install $*" >&2; exit 1; }
export DEBIAN_FRONTEND=noninteractive
exec 9>"${TMPDIR:-/tmp}/quotegw-apt.lock"
flock -w 900 9 || { echo "apt-install: waited 900 s for another install of ours" >&2; exit 1; }
[ -e "$file" ] && exit 0
for attempt in 1 2 3 4 5; do
  if apt-get -o DPkg::Lock::Timeout=300 update -qq >&2 \
     && apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >&2; then
    break
  fi
  [ "$attempt" = 5 ] && break
  echo "apt-install: attempt $attempt failed (another apt-get?), retrying" >&2
  sleep $((attempt * 5))
done
[ -e "$file" ] || { echo "apt-install: installing $* did not provide $file" >&2; exit 1; }
