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
# as many compiles at once as there are cores; xargs fails if any does
printf '%s\n' "${fixtures[@]}" | xargs -P "$(nproc)" -I{} sh -c \
  '"$0" compile "tests/fixtures/$1/model.onnx" --inputset "tests/fixtures/$1/train.npy" -o "$2/$1.fhe" >/dev/null' \
  "$fhec" {} "$out"
stems=()
for f in "${fixtures[@]}"; do
  stems+=("$out/$f")
done
"$venv/bin/python" scripts/check_concrete.py "${stems[@]}"
