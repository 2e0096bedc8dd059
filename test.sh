#!/usr/bin/env bash
# Runs every test: unit and property tests, integration tests against a real gateway on 127.0.0.1:0
# (WebSocket protocol, feeds, access control, adversarial clients, upstream faults, a bounded soak),
# the widget in headless Chromium, the dashboards against promtool and a real Prometheus, a smoke run
# of each benchmark, the systemd unit (deploy/quotegw.service) against systemd-analyze verify and
# security, and a short run of every fuzz target. Tests install or start whatever they need
# themselves.
#   QUOTEGW_FUZZ_SECS (default 20) sets the fuzzing time per target; QUOTEGW_SOAK_SECS (default 120)
#   the soak's length.
set -euo pipefail
cd "$(dirname "$0")"
# Benches are run once as a smoke check (criterion's test mode, the load harness's smoke run): speed
# is measured with `cargo bench`, never asserted here.
cargo test --all-targets --locked "$@"
tests/deploy/check-unit.sh
# The fuzzing gate first shows it can fail (a planted crash must turn run.sh red), then fuzzes.
fuzz/selftest.sh
fuzz/run.sh "${QUOTEGW_FUZZ_SECS:-20}"
