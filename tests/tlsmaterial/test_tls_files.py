"""The files on disk: layout, modes, refusing to overwrite, and all-or-nothing replacement."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from teeserve import tlsmaterial
from teeserve._io import OutputExists
from teeserve.tlsmaterial import MaterialExists, TlsMaterialError

from _tls_helpers import CLIENT_CN, SERVER_CN

SECRET = {"ca_key.pem", "server/key.pem", "client/key.pem", "ssl.cfg"}


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _make(out: Path, **kwargs: object) -> tlsmaterial.TlsMaterial:
    kwargs.setdefault("server_cn", SERVER_CN)
    kwargs.setdefault("client_cn", CLIENT_CN)
    return tlsmaterial.make_tls_material(out, **kwargs)  # type: ignore[arg-type]


def test_layout_and_modes(ec_material) -> None:
    out = ec_material.out_dir
    assert sorted(_snapshot(out)) == sorted(tlsmaterial.LAYOUT)
    for name in tlsmaterial.LAYOUT:
        assert _mode(out / name) == (0o600 if name in SECRET else 0o644), name
    assert ec_material.server_key == out / "server" / "key.pem"
    assert ec_material.client_cert == out / "client" / "cert.pem"
    assert ec_material.two_way
    # No staging leftovers next to the output directory.
    assert [p.name for p in out.parent.iterdir()] == ["ssl_configure"]


def test_oneway_layout(oneway_material) -> None:
    files = _snapshot(oneway_material.out_dir)
    assert sorted(files) == sorted(n for n in tlsmaterial.LAYOUT if not n.startswith("client/"))
    assert oneway_material.client_cert is None and oneway_material.client_key is None


def test_existing_set_is_not_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    _make(out)
    before = _snapshot(out)
    with pytest.raises(MaterialExists) as info:
        _make(out)
    assert isinstance(info.value, OutputExists)  # the project-wide "already exists" error
    assert "--force" in str(info.value)
    assert _snapshot(out) == before


def test_a_single_leftover_file_blocks_without_force(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    (out / "client").mkdir(parents=True)
    (out / "client" / "key.pem").write_bytes(b"old")
    with pytest.raises(MaterialExists, match="client/key.pem"):
        _make(out)
    assert _snapshot(out) == {"client/key.pem": b"old"}


def test_existing_directory_with_other_files(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    out.mkdir()
    (out / "README").write_text("mine")
    made = _make(out)
    files = _snapshot(out)
    assert files.pop("README") == b"mine"
    assert sorted(files) == sorted(tlsmaterial.LAYOUT)
    assert _mode(made.server_key) == 0o600
    assert sorted(p.name for p in out.iterdir()) == sorted(["README", "ca_cert.pem", "ca_key.pem", "client",
                                                            "server", "ssl.cfg"])


def test_force_replaces_the_whole_set(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    _make(out)
    (out / "notes.txt").write_text("keep me")
    old = _snapshot(out)
    made = _make(out, force=True)
    new = _snapshot(out)
    assert new["notes.txt"] == b"keep me"
    for name in tlsmaterial.LAYOUT:
        assert new[name] != old[name], name
        assert _mode(out / name) == (0o600 if name in SECRET else 0o644)
    # The new set is consistent: the new ssl.cfg carries the new CA and key.
    cfg = tlsmaterial.load_ssl_config(made.ssl_cfg)
    assert cfg.custom_ca.encode() == new["ca_cert.pem"]
    assert cfg.server_key.encode() == new["server/key.pem"]
    assert sorted(p.name for p in out.iterdir()) == ["ca_cert.pem", "ca_key.pem", "client", "notes.txt",
                                                      "server", "ssl.cfg"]


def test_force_oneway_over_twoway_removes_the_old_client_files(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    _make(out)
    made = _make(out, client_cn=None, force=True)
    assert not made.two_way
    assert not (out / "client").exists()
    assert sorted(_snapshot(out)) == sorted(n for n in tlsmaterial.LAYOUT if not n.startswith("client/"))


def test_failure_while_replacing_restores_the_old_set(tmp_path: Path) -> None:
    """A real failure half-way through the swap (client/ is a file, so client/cert.pem cannot be put in
    place after the CA, server files and ssl.cfg were): the old set must come back unchanged."""
    out = tmp_path / "ssl_configure"
    _make(out, client_cn=None)
    (out / "client").write_bytes(b"in the way")
    before = _snapshot(out)
    with pytest.raises(TlsMaterialError, match="cannot write"):
        _make(out, force=True)
    assert _snapshot(out) == before
    names = sorted(p.name for p in out.iterdir())
    assert names == ["ca_cert.pem", "ca_key.pem", "client", "server", "ssl.cfg"]
    for name in ("ca_key.pem", "server/key.pem", "ssl.cfg"):
        assert _mode(out / name) == 0o600


def test_output_path_that_is_a_file(tmp_path: Path) -> None:
    out = tmp_path / "ssl_configure"
    out.write_text("x")
    with pytest.raises(TlsMaterialError, match="not a directory"):
        _make(out)
    assert out.read_text() == "x"


def test_parent_directories_are_created(tmp_path: Path) -> None:
    made = _make(tmp_path / "a" / "b" / "ssl_configure")
    assert made.ca_cert.is_file()
    assert [p.name for p in (tmp_path / "a" / "b").iterdir()] == ["ssl_configure"]
