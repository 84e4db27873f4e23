"""Concrete ML's side of scripts/bench-vs-concrete.sh: the same models as fhec's
fixtures, compiled by Concrete ML at its defaults (n_bits 6; rounding 6 for the
networks), then key generation and FHE latency per sample (median of `--runs`).

Needs concrete-ml (1.9 here: `pip install concrete-ml==1.9.0` in a Python 3.11 venv).
Prints one JSON object per model on stdout."""

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np

FIXTURES = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures"


def _breast():
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    x, y = load_breast_cancer(return_X_y=True)
    # the fixtures' split (tests/fixtures/gen_fixtures.py)
    return train_test_split(x.astype(np.float32), y, test_size=0.3, random_state=0, stratify=y)


def _tree(kind):
    from concrete.ml import sklearn as cml

    xtr, xte, ytr, yte = _breast()
    model = {
        "dt_breast": lambda: cml.DecisionTreeClassifier(max_depth=5, random_state=0, n_bits=6),
        "rf_breast": lambda: cml.RandomForestClassifier(
            n_estimators=10, max_depth=4, random_state=0, n_bits=6
        ),
        "xgb_breast": lambda: cml.XGBClassifier(
            n_estimators=10, max_depth=3, random_state=0, n_jobs=1, n_bits=6
        ),
    }[kind]()
    model.fit(xtr, ytr)
    t = time.perf_counter()
    model.compile(xtr)
    return model, model.fhe_circuit, xte, time.perf_counter() - t


def _network(name):
    import onnx
    import onnx.version_converter
    from concrete.ml.torch.compile import compile_onnx_model

    d = FIXTURES / name
    xtr = np.load(d / "train.npy")
    # Concrete ML reads opset 14 only; these networks' ops mean the same there
    model = onnx.version_converter.convert_version(onnx.load(d / "model.onnx"), 14)
    t = time.perf_counter()
    module = compile_onnx_model(model, xtr, n_bits=6, rounding_threshold_bits=6)
    return module, module.fhe_circuit, np.load(d / "test_x.npy"), time.perf_counter() - t


def bench(name, runs):
    model, circuit, xte, compile_s = (
        _tree(name) if name in ("dt_breast", "rf_breast", "xgb_breast") else _network(name)
    )
    t = time.perf_counter()
    circuit.keygen(force=True)
    keygen_s = time.perf_counter() - t
    evaluation = circuit.keys.evaluation.serialize()
    times = []
    for i in range(runs):
        q = model.quantize_input(xte[i : i + 1])
        enc = circuit.encrypt(q)
        t = time.perf_counter()
        out = circuit.run(enc)
        times.append(time.perf_counter() - t)
        circuit.decrypt(out)
    stats = circuit.statistics
    return {
        "model": name,
        "pbs": int(stats.get("programmable_bootstrap_count", -1)),
        "compile_s": round(compile_s, 2),
        "keygen_s": round(keygen_s, 2),
        "evaluation_key_mb": round(len(evaluation) / 1e6, 1),
        "fhe_ms": round(1000 * statistics.median(times), 1),
        "runs": runs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("models", nargs="+")
    p.add_argument("--runs", type=int, default=5)
    a = p.parse_args()
    for m in a.models:
        print(json.dumps(bench(m, a.runs)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
