"""Writing a set of TLS material to disk, all or nothing.

Layout (the reference deployment's ``ssl_configure/``, so its scripts and docs still apply)::

    ssl_configure/
        ca_cert.pem        0644   the CA certificate (give it to requesters)
        ca_key.pem         0600   the CA private key (keep it with the model owner)
        server/cert.pem    0644
        server/key.pem     0600
        client/cert.pem    0644   two-way TLS only
        client/key.pem     0600   two-way TLS only
        ssl.cfg            0600   TensorFlow Serving's SSLConfig; holds the server key

Strategy: nothing is generated until every input is checked, and nothing existing is touched until the
whole set is written. The set is staged (files created with their final mode before any byte is
written, via :func:`teeserve._io.write_file_atomic`) in a hidden directory beside its destination, then:

- a new output directory: the staged directory is renamed to it in one step;
- an existing directory: each existing file of the set is first moved aside, then the staged files are
  renamed into place; if anything fails the moved-aside files are put back. With ``force``, files of the
  set that the new material does not have (the client files after a one-way run) are removed too, so
  the directory never mixes two sets. Files outside the set are left alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .._io import PUBLIC_MODE, SECRET_MODE, write_file_atomic
from ._errors import MaterialExists, TlsMaterialError
from ._sslcfg import SSLConfig, format_ssl_config
from ._x509 import DEFAULT_DAYS, DEFAULT_KEY_TYPE, IssuedMaterial, issue_material

__all__ = ["TlsMaterial", "make_tls_material", "write_material", "LAYOUT"]

#: Every file of a set, relative to the output directory.
LAYOUT: tuple[str, ...] = (
    "ca_cert.pem",
    "ca_key.pem",
    "server/cert.pem",
    "server/key.pem",
    "client/cert.pem",
    "client/key.pem",
    "ssl.cfg",
)

_SSL_CFG_HEADER = (
    "# TensorFlow Serving SSLConfig (--ssl_config_file), written by 'teeserve certs'.\n"
    "# It holds the server's private key: deploy it only as a Gramine encrypted (protected) file.\n"
)


@dataclass(frozen=True, slots=True)
class TlsMaterial:
    """Where a set of TLS material was written. ``client_*`` are ``None`` for one-way TLS."""

    out_dir: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path | None
    client_key: Path | None
    ssl_cfg: Path

    @property
    def two_way(self) -> bool:
        return self.client_cert is not None


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _files(issued: IssuedMaterial) -> dict[str, tuple[bytes, int]]:
    cfg = SSLConfig(
        server_key=issued.server_key.decode("ascii"),
        server_cert=issued.server_cert.decode("ascii"),
        custom_ca=issued.ca_cert.decode("ascii") if issued.client_cert is not None else "",
        client_verify=issued.client_cert is not None,
    )
    files = {
        "ca_cert.pem": (issued.ca_cert, PUBLIC_MODE),
        "ca_key.pem": (issued.ca_key, SECRET_MODE),
        "server/cert.pem": (issued.server_cert, PUBLIC_MODE),
        "server/key.pem": (issued.server_key, SECRET_MODE),
        "ssl.cfg": ((_SSL_CFG_HEADER + format_ssl_config(cfg)).encode("ascii"), SECRET_MODE),
    }
    if issued.client_cert is not None and issued.client_key is not None:
        files["client/cert.pem"] = (issued.client_cert, PUBLIC_MODE)
        files["client/key.pem"] = (issued.client_key, SECRET_MODE)
    return files


def _existing(out_dir: Path) -> list[str]:
    return [name for name in LAYOUT if os.path.lexists(out_dir / name)]


def _stage(stage: Path, files: dict[str, tuple[bytes, int]]) -> None:
    for name, (data, mode) in files.items():
        target = stage / name
        target.parent.mkdir(mode=0o755, exist_ok=True)
        write_file_atomic(target, data, mode=mode, overwrite=False)
    for sub in ("server", "client"):
        if (stage / sub).is_dir():
            os.chmod(stage / sub, 0o755)
            _fsync_dir(stage / sub)
    _fsync_dir(stage)


def write_material(
    out_dir: str | os.PathLike[str], issued: IssuedMaterial, *, force: bool = False
) -> TlsMaterial:
    """Write ``issued`` under ``out_dir`` in the reference layout, all or nothing (see module docs).

    Raises:
        MaterialExists: files of the set exist and ``force`` is false (nothing is written).
        TlsMaterialError: ``out_dir`` is not a directory, or the files could not be written (what
            existed before is left as it was).
    """
    out = Path(out_dir)
    files = _files(issued)
    if out.exists() and not out.is_dir():
        raise TlsMaterialError(f"{out}: exists and is not a directory")
    existing = _existing(out) if out.is_dir() else []
    if existing and not force:
        raise MaterialExists(out, existing)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        if not out.exists():
            stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".part", dir=parent))
            try:
                _stage(stage, files)
                os.chmod(stage, 0o755)
                os.rename(stage, out)  # fails if someone created a non-empty out meanwhile
            except BaseException:
                shutil.rmtree(stage, ignore_errors=True)
                raise
            _fsync_dir(parent)
        else:
            _swap_into(out, files)
    except OSError as exc:
        raise TlsMaterialError(f"{out}: cannot write TLS material: {exc.strerror or exc}") from None
    return _record(out, two_way="client/cert.pem" in files)


def _swap_into(out: Path, files: dict[str, tuple[bytes, int]]) -> None:
    """Replace the set inside an existing directory, putting the old files back on any failure."""
    stage = Path(tempfile.mkdtemp(prefix=".teeserve-certs.", suffix=".part", dir=out))
    backup = Path(tempfile.mkdtemp(prefix=".teeserve-certs.", suffix=".old", dir=out))
    moved: list[str] = []
    placed: list[str] = []
    try:
        _stage(stage, files)
        for name in _existing(out):
            (backup / name).parent.mkdir(exist_ok=True)
            os.rename(out / name, backup / name)
            moved.append(name)
        for name in files:
            (out / name).parent.mkdir(mode=0o755, exist_ok=True)
            os.rename(stage / name, out / name)
            placed.append(name)
        for sub in ("server", "client"):
            _fsync_dir(out / sub)
        _fsync_dir(out)
    except BaseException:
        for name in placed:
            with contextlib.suppress(OSError):
                os.unlink(out / name)
        for name in moved:
            with contextlib.suppress(OSError):
                os.rename(backup / name, out / name)
        raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        # The old set (including its private keys) is deleted, not kept as a backup.
        shutil.rmtree(backup, ignore_errors=True)
    # A one-way run over a two-way set leaves client/ empty; remove it if nothing else is there.
    if "client/cert.pem" not in files:
        with contextlib.suppress(OSError):
            (out / "client").rmdir()


def _record(out: Path, *, two_way: bool) -> TlsMaterial:
    return TlsMaterial(
        out_dir=out,
        ca_cert=out / "ca_cert.pem",
        ca_key=out / "ca_key.pem",
        server_cert=out / "server" / "cert.pem",
        server_key=out / "server" / "key.pem",
        client_cert=out / "client" / "cert.pem" if two_way else None,
        client_key=out / "client" / "key.pem" if two_way else None,
        ssl_cfg=out / "ssl.cfg",
    )


def make_tls_material(
    out_dir: str | os.PathLike[str],
    *,
    server_cn: str,
    client_cn: str | None = None,
    key_type: str = DEFAULT_KEY_TYPE,
    days: int = DEFAULT_DAYS,
    ca_days: int | None = None,
    ca_cn: str | None = None,
    server_dns: Sequence[str] = (),
    server_ips: Sequence[str] = (),
    client_dns: Sequence[str] = (),
    force: bool = False,
) -> TlsMaterial:
    """Issue a CA, a server and (when ``client_cn`` is given: two-way TLS) a client certificate, and
    write them with ``ssl.cfg`` under ``out_dir``. See :func:`issue_material` for the certificates and
    :func:`write_material` for the files.

    Raises:
        CertificateOptionsError: bad names, addresses, key type or validity (checked first).
        MaterialExists: the set exists and ``force`` is false (checked before generating keys).
        TlsMaterialError: the files could not be written.
    """
    out = Path(out_dir)
    if not force and out.is_dir() and (existing := _existing(out)):
        raise MaterialExists(out, existing)
    issued = issue_material(
        server_cn=server_cn,
        client_cn=client_cn,
        key_type=key_type,
        days=days,
        ca_days=ca_days,
        ca_cn=ca_cn,
        server_dns=server_dns,
        server_ips=server_ips,
        client_dns=client_dns,
    )
    return write_material(out, issued, force=force)
