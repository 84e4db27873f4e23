#!/usr/bin/env bash
# Builds fhec, compiles the bundled iris MLP and runs it on real TFHE ciphertexts.
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=tests/fixtures/mlp_iris
out=${1:-target/demo}
mkdir -p "$out"
cargo build --bin fhec
fhec=${CARGO_TARGET_DIR:-target}/debug/fhec
"$fhec" compile $fixture/model.onnx --inputset $fixture/train.npy -o "$out/mlp_iris.fhe"
"$fhec" inspect "$out/mlp_iris.fhe"
"$fhec" predict "$out/mlp_iris.fhe" --input $fixture/test_x.npy --mode simulate --limit 5 -o "$out/simulate.npz" --force
"$fhec" predict "$out/mlp_iris.fhe" --input $fixture/test_x.npy --mode fhe --limit 5 --keys "$out/keys" -o "$out/fhe.npz" --force
