"""TensorFlow Serving's wire definitions, in a private protobuf descriptor pool.

Strategy: ``tfserving.binpb`` is a FileDescriptorSet with TensorFlow Serving's API and config protos
and the TensorFlow protos they import (see ``scripts/gen_protos.py`` for its provenance). It is loaded
into a *private* ``DescriptorPool`` rather than the default one, so that:

- teeserve never clashes with TensorFlow's or ``tensorflow-serving-api``'s own registrations of the same
  files when both are loaded in one process (a duplicate-file error in the default pool);
- an ONNX-only server speaks the full API without importing TensorFlow.

Messages are ordinary protobuf classes; the bytes on the wire are identical to the official stubs'.
Use ``pb.PredictRequest`` (short names, where unambiguous) or ``message_class("tensorflow.serving.X")``.
Service and method names for gRPC are in ``SERVICES``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import Message

__all__ = ["POOL", "pb", "message_class", "SERVICES"]

POOL = descriptor_pool.DescriptorPool()


def _load() -> dict[str, str]:
    data = resources.files(__package__).joinpath("tfserving.binpb").read_bytes()
    fds = descriptor_pb2.FileDescriptorSet.FromString(data)
    short: dict[str, str | None] = {}
    for file_proto in fds.file:  # dependencies come first in the set
        POOL.Add(file_proto)

        def visit(prefix: str, messages: Any) -> None:
            for m in messages:
                full = f"{prefix}.{m.name}" if prefix else m.name
                short[m.name] = None if m.name in short and short[m.name] != full else full
                visit(full, m.nested_type)

        visit(file_proto.package, file_proto.message_type)
    return {k: v for k, v in short.items() if v is not None}


_SHORT = _load()
_CLASSES: dict[str, type[Message]] = {}


def message_class(full_name: str) -> type[Message]:
    """The message class for a fully qualified name, e.g. ``tensorflow.serving.PredictRequest``."""
    cls = _CLASSES.get(full_name)
    if cls is None:
        cls = message_factory.GetMessageClass(POOL.FindMessageTypeByName(full_name))
        _CLASSES[full_name] = cls
    return cls


class _Messages:
    """Attribute access to message classes by short name (``pb.PredictRequest``)."""

    def __getattr__(self, name: str) -> type[Message]:
        full = _SHORT.get(name)
        if full is None:
            raise AttributeError(f"no unambiguous protobuf message named {name!r}; use message_class()")
        return message_class(full)

    def __dir__(self) -> list[str]:
        return sorted(_SHORT)


pb = _Messages()

#: gRPC services: full service name -> {method: (request full name, response full name)}
SERVICES: dict[str, dict[str, tuple[str, str]]] = {}
for _svc_name in ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService"):
    _svc = POOL.FindServiceByName(_svc_name)
    SERVICES[_svc_name] = {
        m.name: (m.input_type.full_name, m.output_type.full_name) for m in _svc.methods
    }
