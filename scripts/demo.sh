#!/usr/bin/env bash
# Builds fhec, compiles the bundled iris MLP, runs it in simulate, then deploys it: a
# client (keygen, encrypt, decrypt) and a server (run, in a directory holding only the
# server part, the evaluation key and the ciphertexts) exchanging files, on real TFHE.
set -euo pipefail
cd "$(dirname "$0")/.."
fixture=tests/fixtures/mlp_iris
out=${1:-target/demo}
mkdir -p "$out/server"
cargo build --bin fhec
fhec=$PWD/${CARGO_TARGET_DIR:-target}/debug/fhec
"$fhec" compile $fixture/model.onnx --inputset $fixture/train.npy -o "$out/mlp_iris.fhe"
"$fhec" inspect "$out/mlp_iris.fhe"
"$fhec" predict "$out/mlp_iris.fhe" --input $fixture/test_x.npy --mode simulate --limit 5 -o "$out/simulate.npz" --force
# client: keys (kept across runs of the same client part: a new compile of another
# model, or by another fhec version, gets keys of its own), then 5 encrypted samples
keys="$out/keys-$(sha256sum "$out/mlp_iris.client.fhe" | cut -c1-16)"
[ -f "$keys/client.key" ] || "$fhec" keygen "$out/mlp_iris.client.fhe" --keys "$keys"
"$fhec" encrypt "$out/mlp_iris.client.fhe" --keys "$keys" --input $fixture/test_x.npy --limit 5 -o "$out/x.fhect" --force
# server: sees only its part, the evaluation key and the ciphertexts
cp "$out/mlp_iris.server.fhe" "$keys/evaluation.key" "$out/x.fhect" "$out/server/"
(cd "$out/server" && "$fhec" run mlp_iris.server.fhe --evaluation-key evaluation.key x.fhect -o y.fhect --force)
# client: decrypt the server's answer
"$fhec" decrypt "$out/mlp_iris.client.fhe" --keys "$keys" "$out/server/y.fhect" -o "$out/fhe.npz" --force
