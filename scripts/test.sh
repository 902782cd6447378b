#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, property, and end-to-end
# tests that run the real slipway binary against real git and real processes on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi
