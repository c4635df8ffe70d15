"""Render the Gramine manifest template of ``teeserve serve`` for one model layout.

Strategy: a :class:`ManifestSpec` (validated on construction) plus the target :class:`PythonLayout` go
through one Jinja2 template whose own delimiters are ``[[ ]]``/``[% %]``, so the ``{{ gramine.libos }}``
and ``{{ gramine.runtimedir() }}`` placeholders pass through untouched for ``gramine-manifest``. Every
value is written by the ``toml`` filter, and the result is parsed back with :mod:`tomllib` before it is
returned: a rendering is always valid TOML.

Key paths (``mode``):

- ``gramine-mounts``: the model directory and ``ssl.cfg`` are ``type = "encrypted"`` mounts with
  ``key_name``; Gramine decrypts them on read once the key is in ``/dev/attestation/keys/<key_name>``.
  The key is written there before ``main`` by Gramine's ``libsecret_prov_attest.so``
  (``provisioner="gramine"``: ``LD_PRELOAD`` + ``SECRET_PROVISION_*``) or, before the server starts,
  by ``teeserve gramine provision`` (``provisioner="teeserve"``) in the same process.
- ``in-process``: the files are plain (``chroot``) mounts listed in ``sgx.allowed_files``; they are
  protected files whose AES-GCM tags and path binding teeserve checks itself while decrypting them in
  enclave memory (``teeserve.pf``). The key reaches the server from ``teeserve gramine provision``.

Both modes mount each file at the same path as on the host (``path == uri``), so the path Gramine binds
(the normalized host path, gramine-formats.md §1.10) equals the path the server opens: the same
encrypted files work in both modes.
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ._errors import DeployError, ManifestInputError
from ._python import PythonLayout

__all__ = [
    "MODES",
    "PROVISIONERS",
    "ManifestSpec",
    "render_manifest",
    "serve_argv",
]

MODES = ("gramine-mounts", "in-process")
PROVISIONERS = ("teeserve", "gramine")

_SIZE = re.compile(r"\A([1-9][0-9]*)([KMG])\Z")
_KEY_NAME = re.compile(r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}\Z")
_MODEL_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,127}\Z")
_JINJA = ("{{", "}}", "{%", "%}", "{#", "#}")


def _toml(value: Any) -> str:
    """A TOML literal for ``value`` (strings as basic strings with JSON-compatible escapes)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def _check_path(option: str, value: str) -> str:
    if not value.startswith("/"):
        raise ManifestInputError(
            f"{option} {value}: must be an absolute path (mounts are at the same path inside the enclave, "
            "and the encrypted files must be bound to it)"
        )
    _check_text(option, value)
    from ..pf import normalize_path

    return normalize_path(value)


def _check_text(option: str, value: str) -> str:
    if any(d in value for d in _JINJA) or any(ord(c) < 0x20 or c == "\x7f" for c in value):
        raise ManifestInputError(f"{option} {value!r}: contains template delimiters or a control character")
    return value


def _size_bytes(text: str) -> int:
    m = _SIZE.match(text)
    if not m:
        raise ValueError(text)
    return int(m.group(1)) << {"K": 10, "M": 20, "G": 30}[m.group(2)]


@dataclass(frozen=True)
class ManifestSpec:
    """What the manifest serves and how its keys arrive (see the module docstring for ``mode``).

    Paths are host paths, absolute; each is mounted at the same path inside the enclave.
    """

    model_name: str
    model_dir: str
    broker: str
    broker_ca: str
    mode: str = "gramine-mounts"
    provisioner: str = "teeserve"
    ssl_config: str | None = None
    key_name: str = "default"
    enclave_size: str = "4G"
    threads: int = 64
    stack_size: str = "4M"
    grpc_port: int = 8500
    rest_port: int = 8501
    listen_host: str = "0.0.0.0"
    serve_args: tuple[str, ...] = ()
    debug: bool = False
    edmm: bool = False
    isv_prod_id: int = 1
    isv_svn: int = 1
    log_level: str = "error"
    extra_trusted: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if not _MODEL_NAME.match(self.model_name):
            raise ManifestInputError(
                f"--model-name {self.model_name!r}: 1-128 letters, digits, '_', '.', '-' (TF Serving model name)"
            )
        object.__setattr__(self, "model_dir", _check_path("--model-dir", self.model_dir))
        object.__setattr__(self, "broker_ca", _check_path("--broker-ca", self.broker_ca))
        if self.ssl_config is not None:
            object.__setattr__(self, "ssl_config", _check_path("--ssl-config", self.ssl_config))
        object.__setattr__(self, "extra_trusted", tuple(_check_path("--trust", p) for p in self.extra_trusted))
        if self.mode not in MODES:
            raise ManifestInputError(f"--mode {self.mode!r}: one of {', '.join(MODES)}")
        if self.provisioner not in PROVISIONERS:
            raise ManifestInputError(f"--provisioner {self.provisioner!r}: one of {', '.join(PROVISIONERS)}")
        if self.mode == "in-process" and self.provisioner == "gramine":
            raise ManifestInputError(
                "--provisioner gramine needs --mode gramine-mounts: Gramine's libsecret_prov_attest.so can only "
                "install the key for Gramine's encrypted mounts (/dev/attestation/keys/<name>), not hand it to "
                "the server; use --provisioner teeserve for --mode in-process"
            )
        from ..provision import ServerListError, parse_servers

        _check_text("--broker", self.broker)
        try:
            parse_servers(self.broker)
        except ServerListError as exc:
            raise ManifestInputError(f"--broker {self.broker!r}: {exc}") from None
        if not _KEY_NAME.match(self.key_name) or len(f"/dev/attestation/keys/{self.key_name}") > 255:
            raise ManifestInputError(f"--key-name {self.key_name!r}: 1-64 letters, digits, '_', '.', '-'")
        for option, value in (("--enclave-size", self.enclave_size), ("--stack-size", self.stack_size)):
            try:
                size = _size_bytes(value)
            except ValueError:
                raise ManifestInputError(f"{option} {value!r}: a size such as 512M or 4G") from None
            if option == "--enclave-size" and (size & (size - 1) or size < 256 << 20):
                raise ManifestInputError(f"--enclave-size {value}: SGX needs a power of two of at least 256M")
        if not 4 <= self.threads <= 1024:
            raise ManifestInputError(f"--threads {self.threads}: between 4 and 1024 (gRPC, REST and ONNX pools)")
        for option, port in (("--port", self.grpc_port), ("--rest-port", self.rest_port)):
            if not 0 <= port <= 65535:
                raise ManifestInputError(f"{option} {port}: not a TCP port")
        if self.grpc_port and self.grpc_port == self.rest_port:
            raise ManifestInputError("--port and --rest-port must differ")
        for arg in self.serve_args:
            _check_text("--serve-arg", arg)
            flag = arg.split("=", 1)[0]
            if flag in _SPEC_FLAGS:
                raise ManifestInputError(
                    f"--serve-arg {arg}: {flag} is set by the manifest's own options ({_SPEC_FLAGS[flag]}); "
                    "a second value would win over the one the mounts were made for")
        _check_serve_args(serve_argv(self)[1:])
        if not (0 <= self.isv_prod_id <= 0xFFFF and 0 <= self.isv_svn <= 0xFFFF):
            raise ManifestInputError("--isv-prod-id and --isv-svn are 16-bit numbers")
        if self.log_level not in ("none", "error", "warning", "debug", "trace", "all"):
            raise ManifestInputError(f"--log-level {self.log_level!r}: Gramine's none|error|warning|debug|trace|all")

    @property
    def ssl_key_name(self) -> str:
        return self.key_name


#: ``teeserve serve`` flags the manifest sets from its own options (--serve-arg may not set them again:
#: argparse takes the last value, so the server would serve what the mounts were not made for).
_SPEC_FLAGS = {
    "--model_name": "--model-name", "--model_base_path": "--model-dir", "--port": "--port",
    "--rest_api_port": "--rest-port", "--host": "the listen address", "--ssl_config_file": "--ssl-config",
    "--require-encrypted": "--mode in-process sets it",
    "--model_config_file": "--model-name and --model-dir, which a config file would replace",
}


def serve_argv(spec: ManifestSpec) -> list[str]:
    """``teeserve serve``'s flags for ``spec`` (tensorflow_model_server's names)."""
    argv = [
        "serve",
        f"--model_name={spec.model_name}",
        f"--model_base_path={spec.model_dir}",
        f"--port={spec.grpc_port}",
        f"--rest_api_port={spec.rest_port}",
        f"--host={spec.listen_host}",
    ]
    if spec.ssl_config:
        argv.append(f"--ssl_config_file={spec.ssl_config}")
    if spec.mode == "in-process":
        # The model folder and ssl.cfg are host files here (sgx.allowed_files), decrypted by teeserve:
        # a plaintext file the host put in their place must be refused, not served (or, for ssl.cfg,
        # give the host a TLS key of its choosing).
        argv.append("--require-encrypted")
    argv.extend(spec.serve_args)
    return argv


def _check_serve_args(argv: list[str]) -> None:
    """The enclave's ``teeserve serve`` command line must parse here, not fail at the first start
    inside the enclave (after signing, when MRENCLAVE already covers it)."""
    import argparse

    from .._errors import UsageError
    from ..serving._flags import add_serve_arguments, options_from_args

    class _Parser(argparse.ArgumentParser):
        def error(self, message: str) -> Any:  # type: ignore[override]
            raise ManifestInputError(f"--serve-arg: teeserve serve would refuse its arguments: {message}")

    parser = _Parser(prog="teeserve serve", allow_abbrev=False)
    add_serve_arguments(parser)
    try:
        options = options_from_args(parser.parse_args(argv))
    except UsageError as exc:
        raise ManifestInputError(f"--serve-arg: teeserve serve would refuse its arguments: {exc}") from None
    if options.worker_cpu_affinity != "none":
        raise ManifestInputError("--serve-arg --worker-cpu-affinity: it pins --workers processes, and under "
                                 "Gramine there is one worker per enclave")
    if options.worker_connection_balance != "hash":
        raise ManifestInputError("--serve-arg --worker-connection-balance: it deals connections to --workers "
                                 "processes, and under Gramine there is one worker per enclave (and no eBPF)")
    if options.workers != 1:
        raise ManifestInputError("--serve-arg --workers: under Gramine each worker would be a child enclave of "
                                 "its own; keep one worker per enclave and run more replicas (docs/deploy.md)")


def _argv(spec: ManifestSpec, py: PythonLayout) -> list[str]:
    head = [py.argv0, "-m", "teeserve"]
    if spec.provisioner == "gramine":
        return head + serve_argv(spec)  # the key is in place before main() runs
    return head + ["gramine", "provision", "--mode", spec.mode, "--"] + serve_argv(spec)


def _provision_env(spec: ManifestSpec) -> list[tuple[str, str]]:
    env = [
        ("SECRET_PROVISION_SERVERS", spec.broker),
        ("SECRET_PROVISION_CA_CHAIN_PATH", spec.broker_ca),
    ]
    if spec.mode == "gramine-mounts":
        env.append(("SECRET_PROVISION_SET_KEY", spec.key_name))
    if spec.provisioner == "gramine":
        env = [("LD_PRELOAD", "libsecret_prov_attest.so"), ("SECRET_PROVISION_CONSTRUCTOR", "1")] + env
    return env


def _key_path_note(spec: ManifestSpec) -> str:
    if spec.mode == "in-process":
        return (f"in-process: teeserve gramine provision fetches the key from {spec.broker} and teeserve "
                "decrypts the protected files in enclave memory")
    who = ("Gramine's libsecret_prov_attest.so (before main)" if spec.provisioner == "gramine"
           else "teeserve gramine provision (before the server starts)")
    return (f"gramine-mounts: {who} writes the key from {spec.broker} to /dev/attestation/keys/{spec.key_name}; "
            "Gramine decrypts the encrypted mounts")


def _unique(items: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _outermost(paths: Sequence[str]) -> list[str]:
    """``paths`` without duplicates and without those inside another one (a mount or a trusted
    directory already covers them)."""
    kept: list[str] = []
    for p in _unique(paths):
        if not any(p != q and p.startswith(q.rstrip("/") + "/") for q in paths):
            kept.append(p)
    return kept


def render_manifest(spec: ManifestSpec, py: PythonLayout, *, version: str | None = None) -> str:
    """The manifest template text for ``spec`` run by the interpreter ``py`` (valid TOML).

    Raises:
        ManifestInputError: a path of ``py`` cannot go into a manifest.
    """
    from importlib import resources

    try:
        import jinja2
    except ModuleNotFoundError:
        raise DeployError(
            "rendering the manifest needs jinja2, which the server's runtime venv does not carry: "
            "pip install jinja2==3.1.6 (or teeserve[deploy]) where you render it"
        ) from None

    from .. import __version__

    for p in (py.argv0, py.entrypoint, py.prefix, py.stdlib, py.dynload, *py.site_packages):
        _check_path("--python", p)
    arch = f"/lib/{py.multiarch}"
    usr_arch = f"/usr/lib/{py.multiarch}"
    lib_dirs = ["/lib", arch, usr_arch]
    shared_dir = None
    if py.shared_lib:
        shared_dir = py.shared_lib.rsplit("/", 1)[0]
        lib_dirs.append(shared_dir)
    plain = [arch, usr_arch, py.stdlib, py.dynload, py.prefix, py.entrypoint.rsplit("/", 1)[0], spec.broker_ca]
    if shared_dir:
        plain.append(shared_dir)
    plain.extend(spec.extra_trusted)
    trusted_dirs = _outermost([arch, usr_arch, py.stdlib, py.dynload, py.prefix])
    trusted = [f"file:{d}/" for d in trusted_dirs]
    for f in (py.entrypoint, py.shared_lib, spec.broker_ca, *spec.extra_trusted):
        if f and not any(f.startswith(d + "/") for d in trusted_dirs):
            trusted.append(f"file:{f}")
    def overlaps(a: str, b: str) -> bool:
        return a == b or a.startswith(b.rstrip("/") + "/") or b.startswith(a.rstrip("/") + "/")

    trusted_paths = [*trusted_dirs, *(f for f in (py.entrypoint, py.shared_lib, spec.broker_ca) if f)]
    for option, path in (("--model-dir", spec.model_dir), ("--ssl-config", spec.ssl_config)):
        if not path:
            continue
        if any(overlaps(path, d) for d in trusted_paths):
            raise ManifestInputError(f"{option} {path}: overlaps a trusted directory or file of the interpreter "
                                     "(or the broker CA); keep models and ssl.cfg apart from the venv and the "
                                     "system library directories")
        for extra in spec.extra_trusted:
            if overlaps(path, extra):
                raise ManifestInputError(f"--trust {extra}: overlaps {option} {path} (secret files are mounted "
                                         "encrypted, not trusted)")
    data: list[dict[str, str | None]] = []
    allowed: list[str] = []
    secret_files = [(spec.model_dir, True)] + ([(spec.ssl_config, False)] if spec.ssl_config else [])
    for path, is_dir in secret_files:
        if spec.mode == "gramine-mounts":
            data.append({"type": "encrypted", "path": path, "uri": f"file:{path}", "key_name": spec.key_name})
        else:
            data.append({"type": "chroot", "path": path, "uri": f"file:{path}", "key_name": None})
            allowed.append(f"file:{path}/" if is_dir else f"file:{path}")
    env = jinja2.Environment(
        variable_start_string="[[", variable_end_string="]]",
        block_start_string="[%", block_end_string="%]",
        comment_start_string="[#", comment_end_string="#]",
        undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True,
    )
    env.filters["toml"] = _toml
    source = resources.files(__package__).joinpath("templates/teeserve.manifest.template.j2").read_text("utf-8")
    text = env.from_string(source).render(
        s=spec, py=py, version=version or __version__, argv=_argv(spec, py),
        ld_library_path=":".join(_unique(lib_dirs)), provision_env=_provision_env(spec),
        plain_mounts=_outermost([p for p in plain if p not in {d["path"] for d in data}]),
        data_mounts=data, trusted_files=_unique(trusted), allowed_files=_unique(allowed),
        key_path_note=_key_path_note(spec),
    )
    tomllib.loads(text)  # a rendering is always valid TOML (raises on a template bug)
    return text
