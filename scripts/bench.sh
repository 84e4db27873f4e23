#!/usr/bin/env bash
# Benchmark (prints figures, asserts nothing): per fixture model, compile time, keygen
# time, evaluation-key size, per-sample FHE latency (measured and predicted), bootstraps
# per sample, and per partition one KS+PBS timed alone against the cost model.
# Usage: scripts/bench.sh [samples] [fixture...]
set -euo pipefail
cd "$(dirname "$0")/.."
samples=${1:-3}
shift || true
fixtures=("$@")
[ ${#fixtures[@]} -gt 0 ] || fixtures=(logreg_iris logreg_breast_zipmap linreg_diabetes mlp_iris mlp_wine_matmul mlp_digits)
cargo build --release --bin fhec
fhec=${CARGO_TARGET_DIR:-target}/release/fhec
for f in "${fixtures[@]}"; do
  d=tests/fixtures/$f
  "$fhec" bench "$d/model.onnx" --inputset "$d/train.npy" --input "$d/test_x.npy" --samples "$samples"
done
