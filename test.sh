#!/usr/bin/env bash
# Runs every test: unit and property tests, integration tests against a real gateway on 127.0.0.1:0,
# and a compile check of the benchmarks. Tests install or start whatever they need themselves.
set -euo pipefail
cd "$(dirname "$0")"
# Benches are compiled (so they cannot rot) but not timed here: speed is measured, never asserted.
cargo test --all-targets --locked "$@"
