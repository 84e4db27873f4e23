#!/usr/bin/env bash
# fhec against Concrete ML, side by side in one run on this machine: per model, PBS per
# sample, key generation, evaluation key and FHE latency per sample, both at their
# default settings (docs/BENCHMARKS.md#against-concrete-ml-at-the-defaults).
#
#   CML_PYTHON=/path/to/venv/bin/python bash scripts/bench-vs-concrete.sh [models…]
#
# CML_PYTHON is a Python with concrete-ml installed (1.9 here:
# `python3.11 -m venv v && v/bin/pip install concrete-ml==1.9.0`). The two tools run
# one after the other, never at once, so each has every core.
set -euo pipefail
cd "$(dirname "$0")/.."
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(dt_breast xgb_breast rf_breast mlp_iris mlp_digits cnn_small_digits)
: "${CML_PYTHON:?set CML_PYTHON to a Python with concrete-ml}"
runs=${RUNS:-5}
cargo build --release --bin fhec
out=$(mktemp -d)
for m in "${models[@]}"; do
  "$CML_PYTHON" scripts/bench_concrete_ml.py "$m" --runs "$runs" > "$out/$m.cml.json"
  d=tests/fixtures/$m
  ./target/release/fhec bench "$d/model.onnx" --inputset "$d/train.npy" --input "$d/test_x.npy" \
    --samples "$runs" > "$out/$m.fhec.txt"
done
printf '%-18s %12s %12s %14s %14s %12s %12s %8s\n' model "PBS cml" "PBS fhec" "keygen cml s" "keygen fhec s" "FHE cml ms" "FHE fhec ms" ratio
for m in "${models[@]}"; do
  python3 - "$out/$m.cml.json" "$out/$m.fhec.txt" "$m" <<'EOF'
import json, re, sys
c = json.load(open(sys.argv[1]))
t = open(sys.argv[2]).read()
pbs = int(re.search(r"\| PBS +(\d+)", t).group(1))
keygen = float(re.search(r"keygen +([\d.]+) s", t).group(1))
fhe = float(re.search(r"FHE +([\d.]+) ms/sample", t).group(1))
print("%-18s %12d %12d %14.1f %14.1f %12.0f %12.0f %8.2f" % (
    sys.argv[3], c["pbs"], pbs, c["keygen_s"], keygen, c["fhe_ms"], fhe, fhe / c["fhe_ms"]))
EOF
done
echo "(fhec bench outputs and Concrete ML's JSON in $out)"
