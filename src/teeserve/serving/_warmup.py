"""Model warmup: replay ``assets.extra/tf_serving_warmup_requests`` before a version is AVAILABLE.

Strategy: the file is a TFRecord of ``PredictionLog`` protos (tf-serving-api.md §5), at most 1000
records. TensorFlow reads TFRecords, but an ONNX-only server must not import it, and no light
TFRecord library is installed, so :func:`read_tfrecords` parses the framing itself::

    uint64 length (LE) | uint32 masked_crc32c(length) | bytes data[length] | uint32 masked_crc32c(data)

Both CRCs are verified (CRC-32C, Castagnoli). ``google_crc32c`` is used when installed; otherwise a
numpy implementation computes the CRC of many chunks side by side and combines them with the GF(2)
shift operator, which is fast enough for image-sized records. The file may be a protected file: it
is read (and decrypted) through the version's :class:`ModelFiles`. Each record is replayed
``num_request_iterations_for_warmup`` times straight on the servable, in the loading thread; any
failure fails the load, as in TensorFlow Serving.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import numpy as np

from .._proto import pb
from ._tensors import tensor_proto_to_ndarray
from ._types import Code, ServingError
from .backends._base import LoadError, Servable
from .backends._run import prepare_predict, run_classify, run_regress

__all__ = ["WARMUP_FILE", "MAX_WARMUP_RECORDS", "read_tfrecords", "write_tfrecords", "crc32c",
           "run_warmup"]

WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000

# -- CRC-32C ----------------------------------------------------------------------------------------

_POLY = 0x82F63B78  # reflected Castagnoli polynomial


def _make_table() -> np.ndarray:
    table = np.zeros(256, dtype=np.uint32)
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table[i] = c
    return table


_TABLE = _make_table()
_TABLE_LIST = [int(x) for x in _TABLE]


def _crc_update_py(crc: int, data: bytes) -> int:
    t = _TABLE_LIST
    for b in data:
        crc = t[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc


def _gf2_times(mat: list[int], vec: int) -> int:
    out = 0
    i = 0
    while vec:
        if vec & 1:
            out ^= mat[i]
        vec >>= 1
        i += 1
    return out


def _gf2_square(mat: list[int]) -> list[int]:
    return [_gf2_times(mat, mat[n]) for n in range(32)]


def _shift_operator(nbytes: int) -> list[int]:
    """The 32x32 GF(2) matrix that advances a raw CRC register over ``nbytes`` zero bytes."""
    odd = [_POLY] + [1 << (n - 1) for n in range(1, 32)]  # one zero bit
    op = [1 << n for n in range(32)]  # identity
    bits = nbytes * 8
    power = odd
    while bits:
        if bits & 1:
            op = [_gf2_times(power, op[n]) for n in range(32)]
        bits >>= 1
        if bits:
            power = _gf2_square(power)
    return op


def _crc32c_numpy(data: bytes) -> int:
    n = len(data)
    chunk = max(64, int(np.sqrt(n)))
    k = n // chunk
    body = np.frombuffer(data, dtype=np.uint8, count=k * chunk).reshape(k, chunk)
    regs = np.zeros(k, dtype=np.uint32)
    regs[0] = 0xFFFFFFFF  # the init value enters through the first chunk only
    for j in range(chunk):
        regs = _TABLE[(regs ^ body[:, j]) & 0xFF] ^ (regs >> np.uint32(8))
    shift = _shift_operator(chunk)
    crc = 0
    for r in regs.tolist():
        crc = _gf2_times(shift, crc) ^ r
    crc = _crc_update_py(crc, data[k * chunk:])
    return crc ^ 0xFFFFFFFF


def crc32c(data: bytes) -> int:
    """CRC-32C of ``data`` (google_crc32c if installed, else numpy)."""
    try:
        import google_crc32c  # type: ignore[import-not-found]

        return int(google_crc32c.value(data))
    except ImportError:
        pass
    if len(data) < 4096:
        return _crc_update_py(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    return _crc32c_numpy(data)


def _masked(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


# -- TFRecord framing -------------------------------------------------------------------------------


def read_tfrecords(data: bytes, source: str = "<tfrecord>", limit: int | None = None) -> list[bytes]:
    """Split a TFRecord file into records, verifying both CRCs; ValueError names the record."""
    out: list[bytes] = []
    view = memoryview(data)
    pos = 0
    while pos < len(data):
        if len(data) - pos < 12:
            raise ValueError(f"{source}: truncated record header at offset {pos}")
        (length,) = struct.unpack_from("<Q", data, pos)
        (len_crc,) = struct.unpack_from("<I", data, pos + 8)
        if _masked(crc32c(bytes(view[pos:pos + 8]))) != len_crc:
            raise ValueError(f"{source}: corrupted record {len(out)} at offset {pos} (length CRC mismatch)")
        start = pos + 12
        end = start + length
        if end + 4 > len(data):
            raise ValueError(f"{source}: truncated record {len(out)} at offset {pos}")
        record = bytes(view[start:end])
        (data_crc,) = struct.unpack_from("<I", data, end)
        if _masked(crc32c(record)) != data_crc:
            raise ValueError(f"{source}: corrupted record {len(out)} at offset {pos} (data CRC mismatch)")
        out.append(record)
        if limit is not None and len(out) > limit:
            raise ValueError(f"{source}: more than {limit} records")
        pos = end + 4
    return out


def write_tfrecords(records: list[bytes]) -> bytes:
    """The TFRecord framing of ``records`` (used to write warmup files in tests and tools)."""
    parts = []
    for r in records:
        head = struct.pack("<Q", len(r))
        parts += [head, struct.pack("<I", _masked(crc32c(head))), r, struct.pack("<I", _masked(crc32c(r)))]
    return b"".join(parts)


# -- replay -----------------------------------------------------------------------------------------


def _replay_one(servable: Servable, log: Any, check: bool) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        req = log.predict_log.request
        inputs = {k: tensor_proto_to_ndarray(v, k) for k, v in req.inputs.items()}
        prep = prepare_predict(servable, req.model_spec.signature_name, inputs, list(req.output_filter),
                               check_method=check)
        servable.run(prep.signature_name, prep.inputs, prep.output_aliases)
    elif kind == "classify_log":
        req = log.classify_log.request
        run_classify(servable, req.model_spec.signature_name, req.input, check_method=check)
    elif kind == "regress_log":
        req = log.regress_log.request
        run_regress(servable, req.model_spec.signature_name, req.input, check_method=check)
    elif kind == "multi_inference_log":
        req = log.multi_inference_log.request
        for task in req.tasks:
            if task.method_name.endswith("/classify"):
                run_classify(servable, task.model_spec.signature_name, req.input, multi=True)
            elif task.method_name.endswith("/regress"):
                run_regress(servable, task.model_spec.signature_name, req.input, multi=True)
            else:
                raise ServingError(Code.UNIMPLEMENTED, f"Unsupported signature method_name: {task.method_name}")
    else:
        raise ServingError(Code.UNIMPLEMENTED, f"Unsupported log_type for warmup: {kind}")


def run_warmup(servable: Servable, data: bytes, source: str, iterations: int = 1, *,
               check_method: bool = False, should_stop: Callable[[], bool] | None = None) -> int:
    """Replay every record of a warmup file; returns the number of records. LoadError on failure.

    ``should_stop`` is asked before each run: a warmup can take long (1000 records, many
    iterations), and a server that is stopping should not wait for one whose model will never serve
    (LoadError CANCELLED)."""
    try:
        records = read_tfrecords(data, source, limit=MAX_WARMUP_RECORDS)
    except ValueError as exc:
        if "more than" in str(exc):
            raise LoadError(Code.INVALID_ARGUMENT, f"Number of warmup records exceeds the maximum "
                                                   f"({MAX_WARMUP_RECORDS}) at {source}", permanent=True) from exc
        raise LoadError(Code.DATA_LOSS, str(exc), permanent=True) from exc
    for i, raw in enumerate(records):
        try:
            log = pb.PredictionLog.FromString(raw)
        except Exception as exc:  # protobuf DecodeError
            raise LoadError(Code.INVALID_ARGUMENT, f"{source}: record {i} is not a PredictionLog",
                            permanent=True) from exc
        for _ in range(max(1, iterations)):
            if should_stop is not None and should_stop():
                raise LoadError(Code.CANCELLED, f"{source}: warmup stopped: the server is stopping",
                                permanent=True)
            try:
                _replay_one(servable, log, check_method)
            except ServingError as exc:
                raise LoadError(exc.code, f"{source}: warmup record {i} failed: {exc.message}",
                                permanent=True) from exc
    return len(records)
