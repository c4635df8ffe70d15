"""TLS material for the model owner: a CA, server and client certificates, and TensorFlow Serving's
``ssl.cfg``; and the server side of TLS built from an ``ssl.cfg`` (stdlib ``ssl`` and gRPC).

::

    from teeserve import tlsmaterial

    made = tlsmaterial.make_tls_material("ssl_configure", server_cn="grpc.tf-serving.service.com",
                                         client_cn="client.tf-serving.service.com")
    cfg = tlsmaterial.load_ssl_config(made.ssl_cfg)        # checked: key matches cert, CA for mTLS
    context = tlsmaterial.server_ssl_context(cfg)           # REST front end (key stays in memory)
    creds = tlsmaterial.grpc_server_credentials(cfg)        # gRPC front end

Errors: :class:`TlsMaterialError` and its subclasses (see ``_errors.py``).
"""

from __future__ import annotations

from ._contexts import grpc_server_credentials, memory_file, server_ssl_context
from ._errors import CertificateOptionsError, MaterialExists, SSLConfigError, TlsMaterialError
from ._sslcfg import FIELDS, SSLConfig, check_ssl_config, format_ssl_config, load_ssl_config, parse_ssl_config
from ._writer import LAYOUT, TlsMaterial, make_tls_material, write_material
from ._x509 import (
    CLOCK_SKEW,
    DEFAULT_CA_DAYS,
    DEFAULT_DAYS,
    DEFAULT_KEY_TYPE,
    KEY_TYPES,
    MAX_DAYS,
    IssuedMaterial,
    issue_material,
)

__all__ = [
    "CLOCK_SKEW",
    "CertificateOptionsError",
    "DEFAULT_CA_DAYS",
    "DEFAULT_DAYS",
    "DEFAULT_KEY_TYPE",
    "FIELDS",
    "IssuedMaterial",
    "KEY_TYPES",
    "LAYOUT",
    "MAX_DAYS",
    "MaterialExists",
    "SSLConfig",
    "SSLConfigError",
    "TlsMaterial",
    "TlsMaterialError",
    "check_ssl_config",
    "format_ssl_config",
    "grpc_server_credentials",
    "issue_material",
    "load_ssl_config",
    "make_tls_material",
    "memory_file",
    "parse_ssl_config",
    "server_ssl_context",
    "write_material",
]
