"""One inference request, by gRPC or REST, with the input taken from an image, a .npy file or JSON.

The requester's everyday tool: ``teeserve client predict``. Inputs are turned into named numpy arrays
here (images are decoded and resized with Pillow for the model's input shape, found by asking the server
for the signature), then sent with the official wire formats: a ``PredictRequest`` over gRPC, or TF
Serving's columnar JSON over REST.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from .._proto import pb
from ._channel import ClientError, Stub, TlsOptions, grpc_channel, rest_ssl_context

__all__ = ["Target", "PredictOutcome", "predict", "load_inputs", "get_signature", "top_k"]


@dataclass(frozen=True)
class Target:
    """Where a request goes: address, model, and at most one of version or label."""

    address: str
    model: str
    version: int | None = None
    label: str | None = None
    signature: str = ""
    rest: bool = False
    timeout: float = 30.0


@dataclass
class PredictOutcome:
    model: str
    version: int | None
    outputs: dict[str, np.ndarray]


# ---------------------------------------------------------------- inputs

def _image_array(path: str, shape: tuple[int, ...] | None) -> np.ndarray:
    """Decode an image for the model's input shape: [8, 8] digits (0..16) or [H, W, 3] RGB (0..255)."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(path)
        img.load()
    except (OSError, UnidentifiedImageError) as exc:
        raise ClientError(f"{path}: not an image Pillow can read ({exc})") from exc
    dims = tuple(shape[1:]) if shape else ()
    if len(dims) == 2:  # grayscale model, e.g. the digits demo (values 0..16 as in scikit-learn's data)
        h, w = (d if d > 0 else 8 for d in dims)
        gray = img.convert("L").resize((w, h), Image.Resampling.LANCZOS)
        arr = np.asarray(gray, dtype=np.float32)
        if arr.mean() > 127:  # dark digit on light paper: invert so ink is high, as in the data set
            arr = 255.0 - arr
        return (arr * (16.0 / 255.0))[None, ...]
    if len(dims) == 3 and dims[-1] == 3:  # NHWC colour model, e.g. ResNet-50
        h, w = (d if d > 0 else 224 for d in dims[:2])
        rgb = img.convert("RGB").resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.float32)[None, ...]
    raise ClientError(f"{path}: cannot map an image onto an input of shape {list(shape or ())}; "
                      "send a .npy or JSON input instead")


def load_inputs(
    *, image: str | None, npy: str | None, json_input: str | None, input_name: str | None,
    signature_inputs: Mapping[str, tuple[int, ...] | None],
) -> dict[str, np.ndarray]:
    """Build the named input arrays from exactly one of the three sources."""
    given = [x for x in (image, npy, json_input) if x is not None]
    if len(given) != 1:
        raise ClientError("give exactly one input: --image, --npy or --json")
    names = list(signature_inputs)
    name = input_name or (names[0] if len(names) == 1 else None)
    if image is not None or npy is not None:
        if name is None:
            raise ClientError(f"the model has several inputs ({', '.join(names)}): choose one with --input-name")
        if image is not None:
            return {name: _image_array(image, signature_inputs.get(name))}
        try:
            return {name: np.load(npy, allow_pickle=False)}
        except (OSError, ValueError) as exc:
            raise ClientError(f"{npy}: not a readable .npy array ({exc})") from exc
    assert json_input is not None
    text = Path(json_input).read_text() if not json_input.lstrip().startswith(("{", "[")) else json_input
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientError(f"--json: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if isinstance(value, dict):
        return {k: np.asarray(v) for k, v in value.items()}
    if name is None:
        raise ClientError(f"the model has several inputs ({', '.join(names)}): give a JSON object by name")
    return {name: np.asarray(value)}


def _cast_for(sig_dtype: int | None, arr: np.ndarray) -> np.ndarray:
    from ..serving._tensors import numpy_dtype  # TF DataType -> numpy dtype

    if sig_dtype:
        try:
            return arr.astype(numpy_dtype(sig_dtype), copy=False)
        except (TypeError, ValueError, KeyError):
            return arr
    return arr


# ---------------------------------------------------------------- signature (metadata)

def _raise_rpc(exc: grpc.RpcError, target: Target, tls: TlsOptions | None = None) -> None:
    code = exc.code()
    details = exc.details() or ""
    if code == grpc.StatusCode.UNAVAILABLE:
        hint = "is the server running and the address right?"
        if tls is not None and tls.enabled:
            hint = ("the TLS handshake may have been refused: check --ca, --crt/--key (mutual TLS) and "
                    "--server-name")
        raise ClientError(f"{target.address}: cannot reach the server or complete the connection ({details}); "
                          f"{hint}") from exc
    raise ClientError(f"{target.address}: {code.name}: {details}") from exc


def get_signature(target: Target, tls: TlsOptions) -> dict[str, tuple[int, tuple[int, ...] | None]]:
    """Input alias -> (dtype, shape) of the target signature, asked of the server."""
    if target.rest:
        doc = _rest_request(target, tls, "GET", _rest_path(target) + "/metadata", None)
        sigs = doc["metadata"]["signature_def"]["signature_def"]
        sig = sigs.get(target.signature or "serving_default")
        if sig is None:
            raise ClientError(f"model {target.model} has no signature {target.signature or 'serving_default'!r}")
        from .._proto import POOL

        dt_enum = POOL.FindEnumTypeByName("tensorflow.DataType").values_by_name
        out = {}
        for alias, info in sig.get("inputs", {}).items():
            ts = info.get("tensor_shape", {})
            shape = None if ts.get("unknown_rank") else tuple(int(d.get("size", -1)) for d in ts.get("dim", []))
            dt = dt_enum.get(info.get("dtype", "DT_INVALID"))
            out[alias] = (dt.number if dt is not None else 0, shape)
        return out
    req = pb.GetModelMetadataRequest()
    _fill_spec(req.model_spec, target)
    req.metadata_field.append("signature_def")
    with grpc_channel(target.address, tls) as channel:
        try:
            resp = Stub(channel).GetModelMetadata(req, timeout=target.timeout)
        except grpc.RpcError as exc:
            _raise_rpc(exc, target, tls)
    sdm = pb.SignatureDefMap()
    resp.metadata["signature_def"].Unpack(sdm)
    key = target.signature or "serving_default"
    if key not in sdm.signature_def:
        raise ClientError(f"model {target.model} has no signature {key!r}")
    sig = sdm.signature_def[key]
    return {
        alias: (info.dtype, None if info.tensor_shape.unknown_rank else tuple(d.size for d in info.tensor_shape.dim))
        for alias, info in sig.inputs.items()
    }


# ---------------------------------------------------------------- requests

def _fill_spec(spec: Any, target: Target) -> None:
    spec.name = target.model
    if target.version is not None:
        spec.version.value = target.version
    elif target.label:
        spec.version_label = target.label
    if target.signature:
        spec.signature_name = target.signature


def predict(target: Target, tls: TlsOptions, inputs: Mapping[str, np.ndarray],
            dtypes: Mapping[str, int] | None = None) -> PredictOutcome:
    """Send one Predict request and return the outputs as numpy arrays."""
    from ..serving._tensors import ndarray_to_tensor_proto, tensor_proto_to_ndarray

    dtypes = dtypes or {}
    inputs = {k: _cast_for(dtypes.get(k), v) for k, v in inputs.items()}
    if target.rest:
        body = {"inputs": {k: _jsonable(v) for k, v in inputs.items()}}
        if target.signature:
            body["signature_name"] = target.signature
        doc = _rest_request(target, tls, "POST", _rest_path(target) + ":predict", body)
        outputs = doc["outputs"]
        if not isinstance(outputs, dict):
            outputs = {"output": outputs}
        return PredictOutcome(target.model, target.version, {k: np.asarray(v) for k, v in outputs.items()})
    req = pb.PredictRequest()
    _fill_spec(req.model_spec, target)
    for k, v in inputs.items():
        req.inputs[k].CopyFrom(ndarray_to_tensor_proto(v))
    with grpc_channel(target.address, tls) as channel:
        try:
            resp = Stub(channel).Predict(req, timeout=target.timeout)
        except grpc.RpcError as exc:
            _raise_rpc(exc, target, tls)
    version = resp.model_spec.version.value if resp.model_spec.HasField("version") else None
    return PredictOutcome(resp.model_spec.name, version,
                          {k: tensor_proto_to_ndarray(t) for k, t in resp.outputs.items()})


def _jsonable(arr: np.ndarray) -> Any:
    if arr.dtype.kind in "SO":
        return [{"b64": base64.b64encode(x).decode()} if isinstance(x, bytes) else x for x in arr.reshape(-1)]
    return arr.tolist()


def _rest_path(target: Target) -> str:
    path = f"/v1/models/{target.model}"
    if target.version is not None:
        path += f"/versions/{target.version}"
    elif target.label:
        path += f"/labels/{target.label}"
    return path


class _HTTPSConnection(http.client.HTTPSConnection):
    """HTTPS with a server name that may differ from the address (``--server-name``)."""

    def __init__(self, host: str, port: int, *, context: ssl.SSLContext, server_name: str | None, timeout: float):
        super().__init__(host, port, context=context, timeout=timeout)
        self._server_name = server_name or host

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        self.sock = self._context.wrap_socket(sock, server_hostname=self._server_name)  # type: ignore[attr-defined]


def _rest_request(target: Target, tls: TlsOptions, method: str, path: str, body: Any) -> Any:
    host, _, port = target.address.rpartition(":")
    if not host or not port.isdigit():
        raise ClientError(f"{target.address}: expected HOST:PORT")
    ctx = rest_ssl_context(tls)
    conn: http.client.HTTPConnection
    if ctx is None:
        conn = http.client.HTTPConnection(host, int(port), timeout=target.timeout)
    else:
        conn = _HTTPSConnection(host, int(port), context=ctx, server_name=tls.server_name, timeout=target.timeout)
    data = None if body is None else json.dumps(body).encode()
    try:
        conn.request(method, path, body=data, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
    except ssl.SSLError as exc:
        raise ClientError(f"{target.address}: TLS handshake refused or failed ({exc.reason or exc}); "
                          "check --ca, --crt/--key and --server-name") from exc
    except OSError as exc:
        raise ClientError(f"{target.address}: {exc}") from exc
    except http.client.HTTPException as exc:  # e.g. HTTP/2 frames from a gRPC port
        raise ClientError(f"{target.address}: not an HTTP/1.1 answer ({type(exc).__name__}); is this the REST "
                          "port, and does it need TLS (--ca)?") from exc
    finally:
        conn.close()
    try:
        doc = json.loads(raw, parse_constant=lambda c: float(c.replace("Infinity", "inf")))
    except ValueError as exc:
        raise ClientError(f"{target.address}: HTTP {resp.status}: not JSON: {raw[:200]!r}") from exc
    if resp.status != 200:
        raise ClientError(f"{target.address}: HTTP {resp.status}: {doc.get('error', doc) if isinstance(doc, dict) else doc}")
    return doc


def top_k(probabilities: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    """Per batch row, the ``k`` best (class index, score) pairs."""
    p = np.asarray(probabilities)
    if p.ndim == 1:
        p = p[None, :]
    idx = np.argsort(-p, axis=-1)[:, :k]
    return [[(int(i), float(row[i])) for i in r] for r, row in zip(idx, p)]

