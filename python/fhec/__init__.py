"""fhec: compile ONNX models into circuits that run on TFHE-encrypted data.

The three-line notebook use::

    import fhec
    model = fhec.compile("model.onnx", X_train)          # or an onnx.ModelProto
    y = model.predict(X_test, fhe="simulate")            # "disable" | "simulate" | "execute"

Deployment mirrors Concrete ML's FHEModelDev / FHEModelClient / FHEModelServer::

    model.save("deploy/")                                # model.fhe, model.client.fhe, model.server.fhe
    client = fhec.Client("deploy/", key_dir="keys/")     # the secret key stays in keys/ (mode 0600)
    server = fhec.Server("deploy/")                      # holds nothing secret
    out = server.run(client.encrypt(X_test), client.evaluation_key())
    y = client.decrypt(out)

Errors are ``fhec.FhecError`` with fhec's message. Long calls release the GIL and
print progress on stderr, as the ``fhec`` command does.
"""

from __future__ import annotations

import json
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import _native
from ._native import FhecError

__all__ = ["compile", "load", "Model", "Client", "Server", "FhecError", "__version__"]

__version__: str = _native.__version__
TFHE_RS_VERSION: str = _native.TFHE_RS_VERSION

ArrayLike = Union[np.ndarray, Sequence]
Inputs = Union[ArrayLike, Mapping[str, ArrayLike]]


def _arrays_in(x: Inputs):
    """Samples as the native module takes them: (name or None, shape, float64 bytes)."""
    if isinstance(x, Mapping):
        items = [(str(k), v) for k, v in x.items()]
    else:
        items = [(None, x)]
    out = []
    for name, v in items:
        a = np.ascontiguousarray(np.asarray(v), dtype="<f8")
        if a.ndim == 0:
            raise FhecError("samples must be an array shaped [samples, ...], not a scalar")
        out.append((name, list(a.shape), a.tobytes()))
    return out


def _arrays_out(outputs) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
    """The native module's outputs as NumPy arrays shaped and typed as the ONNX outputs:
    one array for a single-output model, a tuple in output order otherwise."""
    arrays = tuple(
        np.frombuffer(data, dtype="<f8").reshape(shape).astype(np.dtype(dtype))
        for _name, shape, data, dtype in outputs
    )
    return arrays[0] if len(arrays) == 1 else arrays


def _onnx_bytes(model) -> Tuple[bytes, str, Optional[str]]:
    """The ONNX model's bytes, a name for reports, and the directory its external data
    files are read from (a path's directory; a ModelProto from ``onnx.load`` already
    holds its tensors)."""
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        with open(path, "rb") as f:
            return f.read(), os.path.basename(path), os.path.dirname(os.path.abspath(path))
    if isinstance(model, (bytes, bytearray)):
        return bytes(model), "model.onnx", None
    serialize = getattr(model, "SerializeToString", None)
    if serialize is None:
        raise FhecError(
            f"expected a path to an ONNX file or an onnx.ModelProto, not {type(model).__name__}"
        )
    name = getattr(getattr(model, "graph", None), "name", "") or "model"
    return serialize(), f"{name}.onnx", None


class Model:
    """A compiled model: the developer artifact (both parts and the float model)."""

    def __init__(self, native: Any):
        self._native = native

    def predict(self, X: Inputs, fhe: str = "disable", seed: int = 0):
        """Runs samples ``X`` (an array shaped [samples, ...], or a dict keyed by input
        name): ``fhe="disable"`` runs the float model, ``"simulate"`` the integer
        circuit with the FHE error model, ``"execute"`` real FHE in this process (keys
        generated on first use). Returns arrays shaped as the ONNX outputs."""
        return _arrays_out(self._native.predict(_arrays_in(X), fhe, seed))

    def inspect(self) -> Dict[str, Any]:
        """The ``fhec inspect --format json`` report (docs/REPORTS.md)."""
        return json.loads(self._native.inspect_json())

    @property
    def adaptation(self) -> Optional[str]:
        """What compile changed in the settings to make the model fit, if anything."""
        return self._native.adaptation

    def save(self, path: Union[str, os.PathLike]) -> None:
        """Writes ``path/model.fhe`` (developer artifact), ``path/model.client.fhe``
        (for clients) and ``path/model.server.fhe`` (for the server)."""
        self._native.save(os.fspath(path))


def compile(
    model,
    inputset: Inputs,
    n_bits: Optional[int] = None,
    rounding_threshold_bits: Optional[int] = None,
    rounding: Optional[str] = None,
    p_error: Optional[float] = None,
    global_p_error: Optional[float] = None,
    memory_budget: Optional[int] = None,
) -> Model:
    """Compiles an ONNX model (a path, bytes or an ``onnx.ModelProto``) on an inputset.
    Settings left at None keep fhec's defaults, which adapt to the model as
    ``fhec compile`` does (docs/USER-GUIDE.md): ``n_bits``, ``rounding_threshold_bits``,
    ``rounding`` (``"approximate"`` or ``"exact"``), ``p_error`` (per bootstrap) or
    ``global_p_error`` (per sample), ``memory_budget`` (bytes)."""
    onnx, source, model_dir = _onnx_bytes(model)
    native = _native.compile(
        onnx,
        source,
        model_dir,
        _arrays_in(inputset),
        n_bits=n_bits,
        rounding_threshold_bits=rounding_threshold_bits,
        rounding=rounding,
        p_error=p_error,
        global_p_error=global_p_error,
        memory_budget=memory_budget,
    )
    return Model(native)


def load(path: Union[str, os.PathLike]) -> Model:
    """Loads a compiled model: ``model.fhe``, or a directory ``save`` wrote."""
    p = os.fspath(path)
    if os.path.isdir(p):
        p = os.path.join(p, "model.fhe")
    return Model(_native.load(p))


def _part(path: Union[str, os.PathLike], suffix: str) -> str:
    p = os.fspath(path)
    return os.path.join(p, f"model.{suffix}.fhe") if os.path.isdir(p) else p


class Client:
    """The client of a deployed model (like Concrete ML's FHEModelClient): keys,
    encryption, decryption. ``path`` is the directory ``Model.save`` wrote (or the
    client part itself); keys live in ``key_dir`` when given (made there on first use,
    the secret key with mode 0600), in memory otherwise."""

    def __init__(self, path: Union[str, os.PathLike], key_dir: Optional[Union[str, os.PathLike]] = None):
        self._native = _native.NativeClient(
            _part(path, "client"), None if key_dir is None else os.fspath(key_dir)
        )

    def generate_keys(self) -> None:
        """Loads the keys in ``key_dir``, or generates them (and saves them there)."""
        self._native.generate_keys()

    def evaluation_key(self) -> bytes:
        """The evaluation key for the server (nothing in it decrypts)."""
        return self._native.evaluation_key()

    def encrypt(self, X: Inputs) -> bytes:
        """Quantizes and encrypts samples; the bytes go to the server."""
        return self._native.encrypt(_arrays_in(X))

    def decrypt(self, outputs: bytes):
        """Decrypts, dequantizes and post-processes the server's outputs; arrays shaped
        as the ONNX outputs."""
        return _arrays_out(self._native.decrypt(outputs))


class Server:
    """The server of a deployed model (like Concrete ML's FHEModelServer): runs on
    ciphertexts with a client's evaluation key, never sees a secret."""

    def __init__(self, path: Union[str, os.PathLike]):
        self._native = _native.NativeServer(_part(path, "server"))

    def run(self, inputs: bytes, evaluation_key: bytes) -> bytes:
        """Evaluates encrypted inputs; returns encrypted outputs for the client."""
        return self._native.run(inputs, evaluation_key)
