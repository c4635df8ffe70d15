#!/usr/bin/env python3
"""Regenerate src/teeserve/_proto/tfserving.binpb, the vendored TensorFlow Serving API definitions.

Provenance: the wire definitions of TensorFlow Serving's APIs (tensorflow/serving, Apache-2.0) and the
TensorFlow protos they import (tensorflow/tensorflow, Apache-2.0) are taken, as compiled
FileDescriptorProtos, from the official PyPI packages `tensorflow-serving-api==2.21.0` and
`tensorflow-cpu==2.21.0`; they *are* the interface teeserve must be wire-compatible with. Three config
messages that the PyPI package does not ship (SSLConfig, MonitoringConfig, BatchingParameters) are
defined below from ../shared/specs/tf-serving-api.md §1.1, §4, §6, §7; the server reads them only in
text format, where field names (not numbers) matter.

teeserve loads the set into a private descriptor pool at run time (teeserve._proto), so it never
clashes with TensorFlow's own registrations and an ONNX-only server never imports TensorFlow.

Run inside the project venv:  .venv/bin/python scripts/gen_protos.py
"""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOTS = [
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
    "tensorflow_serving.config.platform_config_pb2",
]
OUT = Path(__file__).resolve().parent.parent / "src" / "teeserve" / "_proto" / "tfserving.binpb"

F = descriptor_pb2.FieldDescriptorProto


def _field(msg, name, number, ftype, *, type_name=None, repeated=False):
    f = msg.field.add(name=name, number=number, type=ftype)
    f.label = F.LABEL_REPEATED if repeated else F.LABEL_OPTIONAL
    if type_name:
        f.type_name = type_name
    f.json_name = "".join(p if i == 0 else p.capitalize() for i, p in enumerate(name.split("_")))
    return f


def _own_files() -> list[descriptor_pb2.FileDescriptorProto]:
    # message SSLConfig { string server_key = 1; string server_cert = 2; string custom_ca = 3; bool client_verify = 4; }
    ssl = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/ssl_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    m = ssl.message_type.add(name="SSLConfig")
    _field(m, "server_key", 1, F.TYPE_STRING)
    _field(m, "server_cert", 2, F.TYPE_STRING)
    _field(m, "custom_ca", 3, F.TYPE_STRING)
    _field(m, "client_verify", 4, F.TYPE_BOOL)

    # message PrometheusConfig { bool enable = 1; string path = 2; }
    # message MonitoringConfig { PrometheusConfig prometheus_config = 1; }
    mon = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/config/monitoring_config.proto", package="tensorflow.serving", syntax="proto3"
    )
    p = mon.message_type.add(name="PrometheusConfig")
    _field(p, "enable", 1, F.TYPE_BOOL)
    _field(p, "path", 2, F.TYPE_STRING)
    m = mon.message_type.add(name="MonitoringConfig")
    _field(m, "prometheus_config", 1, F.TYPE_MESSAGE, type_name=".tensorflow.serving.PrometheusConfig")

    # message BatchingParameters (the --batching_parameters_file format), wrappers for "unset" detection.
    bat = descriptor_pb2.FileDescriptorProto(
        name="tensorflow_serving/servables/tensorflow/session_bundle_config.proto",
        package="tensorflow.serving",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )
    m = bat.message_type.add(name="BatchingParameters")
    i64, s, b = ".google.protobuf.Int64Value", ".google.protobuf.StringValue", ".google.protobuf.BoolValue"
    _field(m, "max_batch_size", 1, F.TYPE_MESSAGE, type_name=i64)
    _field(m, "batch_timeout_micros", 2, F.TYPE_MESSAGE, type_name=i64)
    _field(m, "max_enqueued_batches", 3, F.TYPE_MESSAGE, type_name=i64)
    _field(m, "num_batch_threads", 4, F.TYPE_MESSAGE, type_name=i64)
    _field(m, "thread_pool_name", 5, F.TYPE_MESSAGE, type_name=s)
    _field(m, "allowed_batch_sizes", 6, F.TYPE_INT64, repeated=True)
    _field(m, "pad_variable_length_inputs", 7, F.TYPE_BOOL)
    _field(m, "enable_large_batch_splitting", 8, F.TYPE_MESSAGE, type_name=b)
    _field(m, "max_execution_batch_size", 9, F.TYPE_MESSAGE, type_name=i64)
    return [ssl, mon, bat]


def main() -> None:
    seen: dict[str, descriptor_pb2.FileDescriptorProto] = {}

    def walk(fd) -> None:
        if fd.name in seen:
            return
        for dep in fd.dependencies:
            walk(dep)
        proto = descriptor_pb2.FileDescriptorProto()
        fd.CopyToProto(proto)
        seen[fd.name] = proto

    for mod in ROOTS:
        walk(importlib.import_module(mod).DESCRIPTOR)
    fds = descriptor_pb2.FileDescriptorSet()
    fds.file.extend(seen.values())
    fds.file.extend(_own_files())
    OUT.write_bytes(fds.SerializeToString(deterministic=True))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(fds.file)} files)")


if __name__ == "__main__":
    main()
