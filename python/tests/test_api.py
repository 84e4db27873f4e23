"""The Python API end to end: a scikit-learn model and a torch-exported model through
compile, predict (float, simulate, FHE), inspect, save, and the client and server."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest

import fhec

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures"


def _sklearn_tree():
    """A depth-4 decision tree on iris, exported by skl2onnx as a data scientist would."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split
    from sklearn.tree import DecisionTreeClassifier
    from skl2onnx import to_onnx

    x, y = load_iris(return_X_y=True)
    x = x.astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.3, random_state=0)
    clf = DecisionTreeClassifier(max_depth=4, random_state=0).fit(x_train, y_train)
    proto = to_onnx(clf, x_train[:1], options={id(clf): {"zipmap": False}})
    return proto, clf, x_train, x_test, y_test


def test_a_scikit_learn_model_through_the_whole_api(tmp_path):
    proto, clf, x_train, x_test, y_test = _sklearn_tree()
    model = fhec.compile(proto, x_train)

    # float: fhec's interpreter agrees with scikit-learn
    labels, probabilities = model.predict(x_test, fhe="disable")
    assert labels.shape == (len(x_test),) and labels.dtype == np.int64
    assert probabilities.shape == (len(x_test), 3)
    assert np.array_equal(labels, clf.predict(x_test))

    # simulate: within 2 points of the float model
    sim_labels, sim_probabilities = model.predict(x_test, fhe="simulate")
    assert np.mean(sim_labels == y_test) >= np.mean(labels == y_test) - 0.02

    # FHE in this process equals simulation
    fhe_labels, fhe_probabilities = model.predict(x_test[:3], fhe="execute")
    assert np.array_equal(fhe_labels, sim_labels[:3])
    assert np.allclose(fhe_probabilities, sim_probabilities[:3])

    report = model.inspect()
    assert report["schema_version"] == 1
    assert report["pbs_per_sample"] > 0
    assert report["violations"] == []

    # deployment: the parts, a client with its keys on disk, a server without secrets
    model.save(tmp_path / "deploy")
    names = sorted(os.listdir(tmp_path / "deploy"))
    assert names == ["model.client.fhe", "model.fhe", "model.server.fhe"]
    client = fhec.Client(tmp_path / "deploy", key_dir=tmp_path / "keys")
    client.generate_keys()
    mode = stat.S_IMODE(os.stat(tmp_path / "keys" / "client.key").st_mode)
    assert mode == 0o600, oct(mode)
    server = fhec.Server(tmp_path / "deploy")
    outputs = server.run(client.encrypt(x_test[:3]), client.evaluation_key())
    dec_labels, dec_probabilities = client.decrypt(outputs)
    assert np.array_equal(dec_labels, sim_labels[:3])
    assert np.allclose(dec_probabilities, sim_probabilities[:3])

    # a second client loads the same keys; the server refuses the secret key
    again = fhec.Client(tmp_path / "deploy", key_dir=tmp_path / "keys")
    assert again.evaluation_key() == client.evaluation_key()
    secret = (tmp_path / "keys" / "client.key").read_bytes()
    with pytest.raises(fhec.FhecError, match="secret key"):
        server.run(client.encrypt(x_test[:1]), secret)

    # the key prepared by the first call is reused for the same bytes, and only for them
    key = client.evaluation_key()
    again_outputs = server.run(client.encrypt(x_test[3:5]), key)
    assert np.array_equal(client.decrypt(again_outputs)[0], sim_labels[3:5])
    damaged = bytearray(key)
    damaged[-1] ^= 1
    with pytest.raises(fhec.FhecError, match="corrupted"):
        server.run(client.encrypt(x_test[:1]), bytes(damaged))

    # the artifact loads back
    loaded = fhec.load(tmp_path / "deploy")
    assert np.array_equal(loaded.predict(x_test, fhe="disable")[0], labels)


def test_a_torch_exported_model_runs_in_fhe_as_simulated():
    d = FIXTURES / "mlp_iris"
    x_train = np.load(d / "train.npy")
    x_test = np.load(d / "test_x.npy")
    y_test = np.load(d / "test_y.npy")
    model = fhec.compile(str(d / "model.onnx"), x_train, rounding="exact")
    logits = model.predict(x_test, fhe="disable")
    assert logits.shape == (len(x_test), 3) and logits.dtype == np.float32
    simulated = model.predict(x_test, fhe="simulate")
    accuracy = lambda z: np.mean(np.argmax(z, axis=1) == y_test)
    assert accuracy(simulated) >= accuracy(logits) - 0.02
    executed = model.predict(x_test[:2], fhe="execute")
    assert np.array_equal(executed, simulated[:2])


def test_a_model_with_external_data_compiles_from_its_path():
    # torch's dynamo exporter keeps the weights in model.onnx.data beside model.onnx
    d = FIXTURES / "cnn_maxpool_digits_dynamo"
    x_test = np.load(d / "test_x.npy")[:20]
    model = fhec.compile(d / "model.onnx", np.load(d / "train.npy"))
    reference = np.load(d / "reference.npz")["logits"][:20]
    assert np.allclose(model.predict(x_test, fhe="disable"), reference, atol=1e-4)
    # bytes alone cannot reach the data file: the error says so
    with pytest.raises(fhec.FhecError, match="external data file"):
        fhec.compile((d / "model.onnx").read_bytes(), np.load(d / "train.npy"))


def test_errors_are_fhec_errors_with_fhec_messages(tmp_path):
    x = np.zeros((4, 4), dtype=np.float32)
    with pytest.raises(fhec.FhecError, match="not an ONNX model"):
        fhec.compile(b"not a model", x)
    d = FIXTURES / "mlp_iris"
    model = fhec.compile(str(d / "model.onnx"), np.load(d / "train.npy"))
    with pytest.raises(fhec.FhecError, match="shape"):
        model.predict(np.zeros((2, 5)), fhe="simulate")
    with pytest.raises(fhec.FhecError, match="fhe='bogus'"):
        model.predict(x, fhe="bogus")
    with pytest.raises(fhec.FhecError, match="model.client.fhe"):
        fhec.Client(tmp_path)
