#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): `fhec serve` on loopback under concurrent
# clients, next to the same evaluation in one process, for a linear model and a tree
# ensemble. Usage: scripts/bench-serve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --bin fhec
fhec=${CARGO_TARGET_DIR:-target}/release/fhec
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
run() { # fixture clients requests
  local d=tests/fixtures/$1
  "$fhec" compile "$d/model.onnx" --inputset "$d/train.npy" -o "$out/$1.fhe" >/dev/null
  "$fhec" bench-serve "$out/$1.server.fhe" --input "$d/test_x.npy" --clients "$2" --requests "$3"
}
run logreg_iris 16 16
run dt_breast 4 3
run mlp_iris 4 2
