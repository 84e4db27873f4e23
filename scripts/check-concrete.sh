#!/usr/bin/env bash
# Compiles every fixture with fhec, then runs the emitted MLIR through Concrete's compiler
# (concrete-python, in its own venv) and compares Concrete's simulation with fhec's test
# vectors (docs/MLIR.md). Usage: scripts/check-concrete.sh [fixture...]
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${FHEC_CONCRETE_VENV:-$HOME/.cache/fhec-concrete-venv}
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c "import concrete.fhe" 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "concrete-python==2.11.0" "setuptools<70"
fi
cargo build --bin fhec
fhec=${CARGO_TARGET_DIR:-target}/debug/fhec
out=$(mktemp -d)
fixtures=("$@")
[ ${#fixtures[@]} -gt 0 ] || fixtures=($(ls tests/fixtures | while read f; do [ -f "tests/fixtures/$f/model.onnx" ] && echo "$f"; done))
stems=()
for f in "${fixtures[@]}"; do
  "$fhec" compile "tests/fixtures/$f/model.onnx" --inputset "tests/fixtures/$f/train.npy" -o "$out/$f.fhe" >/dev/null
  stems+=("$out/$f")
done
"$venv/bin/python" scripts/check_concrete.py "${stems[@]}"
