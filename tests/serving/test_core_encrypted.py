"""Encrypted models: in-memory decryption, no plaintext on disk, anti-swap path binding, load failures."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from teeserve import pf
from teeserve.serving import Code, ModelRef, ServingError, VersionState
from teeserve.serving._config import ModelConfig, VersionPolicy
from teeserve.serving._secrets import KeyRing, map_host_path

ALL = VersionPolicy("all")


def _scan_for(needles: list[bytes], roots: list[Path], since: float) -> list[str]:
    """Every regular file under ``roots`` modified since ``since`` that contains one of ``needles``."""
    hits: list[str] = []
    seen: set[str] = set()
    for root in roots:
        for dirpath, dirnames, files in os.walk(root, followlinks=False):
            dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
            for f in files:
                p = os.path.join(dirpath, f)
                if p in seen:
                    continue
                seen.add(p)
                try:
                    st = os.lstat(p)
                    if not os.path.isfile(p) or os.path.islink(p) or st.st_mtime < since - 1 \
                            or st.st_size > 512 * 1024 * 1024:
                        continue
                    data = Path(p).read_bytes()
                except OSError:
                    continue
                if any(n in data for n in needles):
                    hits.append(p)
    return hits


def _encrypt_version(files: dict[str, bytes], version_dir: Path, key: bytes, bound_root: str | None = None) -> None:
    """Write protected files straight from memory (the plaintext never touches the disk)."""
    for rel, data in files.items():
        out = version_dir / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        bound = f"{bound_root}/{rel}" if bound_root else os.fspath(out)
        out.write_bytes(pf.encrypt_bytes(data, key, bound))


def test_encrypted_onnx_serves_and_no_plaintext_reaches_the_disk(
        make_core: Any, loop_thread: Any, tmp_path: Path, wrap_key: bytes, onnx_bytes: Any,
        digits_reference: Any) -> None:
    marker = "TEESERVE-PLAINTEXT-MARKER-" + secrets.token_hex(16)
    scale = 1.0 + secrets.randbelow(10**6) / 10**7  # weights no other test writes (the scan covers /tmp)
    model = onnx_bytes(scale=scale, marker=marker)
    assert marker.encode() in model
    start = time.time()
    base = tmp_path / "enc" / "digits"
    _encrypt_version({"model.onnx": model}, base / "1", wrap_key)
    assert marker.encode() not in (base / "1" / "model.onnx").read_bytes()
    c = make_core(base, keyring=KeyRing({"default": wrap_key}))
    x = np.random.default_rng(5).random((2, 8, 8), dtype=np.float32)
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": x}))
    np.testing.assert_array_equal(r.outputs["classes"], digits_reference(x, scale)["classes"])
    chunk = model[len(model) // 2: len(model) // 2 + 64]  # weights, not the marker
    hits = _scan_for([marker.encode(), chunk], [tmp_path, Path(tempfile.gettempdir()), Path.cwd()], start)
    assert hits == []
    control = tmp_path / "control" / "plain.bin"  # the scan does find plaintext when it is there
    control.parent.mkdir()
    control.write_bytes(b"..." + chunk + b"...")
    assert _scan_for([marker.encode(), chunk], [tmp_path], start) == [str(control)]


def test_encrypted_saved_model_leaves_no_plaintext(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                   wrap_key: bytes) -> None:
    tf = pytest.importorskip("tensorflow")
    marker = "TEESERVE-SM-MARKER-" + secrets.token_hex(16)

    class Marked(tf.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = tf.Variable(np.random.default_rng(9).random((4, 3), dtype=np.float32) + 7.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32, name="x")])
        def serve(self, x: Any) -> dict[str, Any]:
            return {"y": tf.matmul(x, self.w), "tag": tf.fill([tf.shape(x)[0]], tf.constant(marker))}

    start = time.time()
    m = Marked()
    ram = f"ram://build-{secrets.token_hex(4)}"
    tf.saved_model.save(m, ram, signatures={"serving_default": m.serve})  # built in memory too
    files: dict[str, bytes] = {}
    for dirpath, _dirs, names in tf.io.gfile.walk(ram):
        for n in names:
            full = f"{dirpath}/{n}"
            with tf.io.gfile.GFile(full, "rb") as f:
                files[full[len(ram) + 1:]] = f.read()
    tf.io.gfile.rmtree(ram)
    assert "variables/variables.index" in files and any(k.startswith("variables/variables.data") for k in files)
    weights = m.w.numpy().tobytes()
    assert any(weights in v for v in files.values())
    base = tmp_path / "enc-sm" / "marked"
    _encrypt_version(files, base / "1", wrap_key)
    c = make_core(base, "marked", keyring=KeyRing({"default": wrap_key}))
    x = np.ones((2, 4), np.float32)
    r = loop_thread.run(c.predict(ModelRef("marked"), "", {"x": x}))
    np.testing.assert_allclose(r.outputs["y"], x @ m.w.numpy(), rtol=1e-6)
    assert list(r.outputs["tag"]) == [marker.encode()] * 2
    assert tf.io.gfile.glob("ram://teeserve-*") == []  # the in-memory copy the load used is gone
    hits = _scan_for([marker.encode(), weights[:32]], [tmp_path, Path(tempfile.gettempdir()), Path.cwd()], start)
    assert hits == []


def _versions(base: Path, wrap_key: bytes, onnx_bytes: Any) -> None:
    _encrypt_version({"model.onnx": onnx_bytes()}, base / "1", wrap_key)


def test_wrong_key_fails_only_that_version(make_core: Any, loop_thread: Any, tmp_path: Path, wrap_key: bytes,
                                           onnx_bytes: Any) -> None:
    base = tmp_path / "digits"
    _versions(base, wrap_key, onnx_bytes)
    _encrypt_version({"model.onnx": onnx_bytes(scale=2.0)}, base / "2", bytes(16))  # another owner's key
    c = make_core([ModelConfig("digits", str(base), version_policy=ALL)], keyring=KeyRing({"default": wrap_key}))
    v2, v1 = loop_thread.call(lambda: c.model_status("digits"))
    assert (v1.version, v1.state, v1.error_code) == (1, VersionState.AVAILABLE, Code.OK)
    assert (v2.version, v2.state, v2.error_code) == (2, VersionState.END, Code.DATA_LOSS)
    assert str(base / "2" / "model.onnx") in v2.error_message
    assert "WrongKeyOrCorruptMetadata" in v2.error_message
    assert wrap_key.hex() not in v2.error_message
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((1, 8, 8), np.float32)}))
    assert r.version == 1
    assert loop_thread.call(c.is_ready)


def test_tampered_node_and_swapped_file_fail_their_versions(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                            wrap_key: bytes, onnx_bytes: Any) -> None:
    base = tmp_path / "digits"
    _versions(base, wrap_key, onnx_bytes)
    # Version 2: large enough for data nodes; flip one byte in the second node.
    _encrypt_version({"model.onnx": onnx_bytes(marker="x" * 20000)}, base / "2", wrap_key)
    p = base / "2" / "model.onnx"
    blob = bytearray(p.read_bytes())
    blob[pf.NODE_SIZE + 100] ^= 0x01
    p.write_bytes(bytes(blob))
    # Version 3: version 1's (valid) file copied under another version: the bound path gives it away.
    (base / "3").mkdir()
    shutil.copy(base / "1" / "model.onnx", base / "3" / "model.onnx")
    c = make_core([ModelConfig("digits", str(base), version_policy=ALL)], keyring=KeyRing({"default": wrap_key}))
    st = {s.version: s for s in loop_thread.call(lambda: c.model_status("digits"))}
    assert st[1].state == VersionState.AVAILABLE
    assert st[2].state == VersionState.END and "TamperedNode" in st[2].error_message
    assert st[3].state == VersionState.END and "PathMismatch" in st[3].error_message
    assert str(base / "3" / "model.onnx") in st[3].error_message
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((1, 8, 8), np.float32)}))
    assert r.version == 1


def test_missing_key_and_plaintext_refusal(make_core: Any, loop_thread: Any, tmp_path: Path, wrap_key: bytes,
                                           onnx_bytes: Any, onnx_model_dir: Path) -> None:
    base = tmp_path / "digits"
    _versions(base, wrap_key, onnx_bytes)
    c = make_core(base)  # empty key ring
    (st,) = loop_thread.call(lambda: c.model_status("digits"))
    assert st.state == VersionState.END and "no wrap key named 'default'" in st.error_message
    c2 = make_core(onnx_model_dir, require_encrypted_models=True)
    (st,) = loop_thread.call(lambda: c2.model_status("digits"))
    assert st.state == VersionState.END and "only encrypted models are allowed" in st.error_message


def test_files_encrypted_for_another_location_need_a_path_map(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                              wrap_key: bytes, onnx_bytes: Any) -> None:
    """The reference deployment binds ``models/<m>/1/...`` and serves from ``/models/<m>``."""
    base = tmp_path / "served" / "digits"
    _encrypt_version({"model.onnx": onnx_bytes()}, base / "1", wrap_key, bound_root="models/digits/1")
    ring = KeyRing({"default": wrap_key})
    c = make_core(base, keyring=ring)
    (st,) = loop_thread.call(lambda: c.model_status("digits"))
    assert st.state == VersionState.END and "PathMismatch" in st.error_message
    c2 = make_core(base, keyring=ring, path_map=((str(base), "models/digits"),))
    (st,) = loop_thread.call(lambda: c2.model_status("digits"))
    assert st.state == VersionState.AVAILABLE


def test_map_host_path_rules() -> None:
    assert map_host_path("/models/m/1/a.pb", [("/models", "models")]) == "models/m/1/a.pb"
    assert map_host_path("/models2/m", [("/models", "models")]) == "/models2/m"  # whole components only
    assert map_host_path("/a/./b//c", []) == "/a/b/c"
    assert map_host_path("/srv/x/1/f", [("/srv/x/", "/enc/y"), ("/srv", "/z")]) == "/enc/y/1/f"


def test_key_ring_keeps_keys_out_of_repr_and_validates() -> None:
    ring = KeyRing()
    key = secrets.token_bytes(16)
    ring.set("default", key)
    assert ring.get() == key and ring.names() == ["default"]
    assert key.hex() not in repr(ring) and repr(key) not in repr(ring)
    with pytest.raises(ValueError):
        ring.set("x", b"short")
    with pytest.raises(TypeError):
        ring.set("x", "0" * 16)  # type: ignore[arg-type]
    from teeserve.serving._secrets import KeyNotAvailable

    with pytest.raises(KeyNotAvailable):
        ring.get("other")


def test_unknown_label_request_on_encrypted_model_is_not_found_free(make_core: Any, loop_thread: Any,
                                                                    encrypted_onnx_model_dir: Path,
                                                                    wrap_key: bytes) -> None:
    c = make_core(encrypted_onnx_model_dir, keyring=KeyRing({"default": wrap_key}))
    with pytest.raises(ServingError) as e:
        loop_thread.run(c.predict(ModelRef("digits", 2), "", {}))
    assert e.value.message == "Servable not found for request: Specific(digits, 2)"
    r = loop_thread.run(c.predict(ModelRef("digits"), "", {"images": np.zeros((1, 8, 8), np.float32)}))
    assert r.version == 1


def test_encrypted_config_and_batching_files_follow_the_path_map(tmp_path: Path, wrap_key: bytes) -> None:
    """--model_config_file and --batching_parameters_file encrypted for the owner's layout
    (``config/...``) and served from another directory: read only through --path-map, like models."""
    from teeserve.serving._config import ConfigError
    from teeserve.serving._core import ServingCore
    from teeserve.serving._flags import parse_serve_args

    served = tmp_path / "served"
    served.mkdir()
    config = served / "models.config"
    batching = served / "batching.config"
    config.write_bytes(pf.encrypt_bytes(
        b'model_config_list { config { name: "m" base_path: "/nonexistent/m" model_platform: "tensorflow" } }',
        wrap_key, "config/models.config"))
    batching.write_bytes(pf.encrypt_bytes(b"max_batch_size { value: 7 }", wrap_key, "config/batching.config"))
    ring = KeyRing({"default": wrap_key})
    argv = [f"--model_config_file={config}", "--enable_batching", f"--batching_parameters_file={batching}"]

    with pytest.raises(ConfigError, match="batching.config"):  # bound to config/..., opened under served/
        ServingCore.from_flags(parse_serve_args(argv), keyring=ring)
    opts = parse_serve_args([*argv, f"--path-map={served}=config"])
    core = ServingCore.from_flags(opts, keyring=ring, path_map=opts.path_map)
    assert core.options.batching is not None and core.options.batching.max_batch_size == 7
    from teeserve.serving._config import read_model_config_file

    assert [c.name for c in read_model_config_file(config, ring, opts.path_map)] == ["m"]
    with pytest.raises(ConfigError, match="PathMismatch"):
        read_model_config_file(config, ring)


def test_each_model_decrypts_with_its_own_named_key(make_core: Any, loop_thread: Any, tmp_path: Path,
                                                    wrap_key: bytes, onnx_bytes: Any) -> None:
    """--model-key b=owner-b: model b's files are encrypted with another owner's key (released by the
    broker as the secret "owner-b"); model a keeps the default key."""
    other = secrets.token_bytes(16)
    _encrypt_version({"model.onnx": onnx_bytes()}, tmp_path / "a" / "1", wrap_key)
    _encrypt_version({"model.onnx": onnx_bytes()}, tmp_path / "b" / "1", other)
    configs = [ModelConfig("a", str(tmp_path / "a")), ModelConfig("b", str(tmp_path / "b"))]
    ring = KeyRing({"default": wrap_key, "owner-b": other})

    c = make_core(configs, keyring=ring, model_keys=(("b", "owner-b"),))
    for name in ("a", "b"):
        (st,) = loop_thread.call(lambda n=name: c.model_status(n))
        assert st.state == VersionState.AVAILABLE, (name, st.error_message)

    c2 = make_core(configs, keyring=ring)  # without the mapping b does not decrypt with 'default'
    (st,) = loop_thread.call(lambda: c2.model_status("b"))
    assert st.state == VersionState.END and "cannot decrypt" in st.error_message
    (st,) = loop_thread.call(lambda: c2.model_status("a"))
    assert st.state == VersionState.AVAILABLE

    c3 = make_core(configs, keyring=KeyRing({"default": wrap_key}), model_keys=(("b", "owner-b"),))
    (st,) = loop_thread.call(lambda: c3.model_status("b"))
    assert st.state == VersionState.END and "owner-b" in st.error_message


@pytest.mark.parametrize(("value", "message"), [
    ("b", "expected MODEL=KEY"), ("=k", "expected MODEL=KEY"), ("b=", "expected MODEL=KEY"),
])
def test_model_key_flag_is_checked(value: str, message: str) -> None:
    from teeserve._errors import UsageError
    from teeserve.serving._flags import parse_serve_args

    m = ["--model_base_path=/m", "--model_name=b"]
    with pytest.raises(UsageError, match=message):
        parse_serve_args([*m, f"--model-key={value}"])
    with pytest.raises(UsageError, match="given twice"):
        parse_serve_args([*m, "--model-key=b=x", "--model-key=b=y"])
    with pytest.raises(UsageError, match="serves only 'b'"):  # a typo would fall back to 'default'
        parse_serve_args([*m, "--model-key=bb=x"])
    assert parse_serve_args([*m, "--model-key=b=owner-b"]).model_keys == (("b", "owner-b"),)
    # With a config file the names are the file's: not checked against --model_name.
    assert parse_serve_args(["--model_config_file=/c", "--model-key=x=k"]).model_keys == (("x", "k"),)


def test_serve_refuses_a_model_key_it_does_not_hold(tmp_path: Path, wrap_key: bytes) -> None:
    import asyncio

    from teeserve.serving._flags import parse_serve_args
    from teeserve.serving._server import ModelServer, ServeError

    key_file = tmp_path / "wrap_key"
    key_file.write_bytes(wrap_key)
    opts = parse_serve_args([f"--model_base_path={tmp_path}", "--port=0", "--rest_api_port=0",
                             "--grpc_socket_path=" + str(tmp_path / "s"), f"--wrap-key={key_file}",
                             "--model-key=default=owner-b"])
    with pytest.raises(ServeError, match="does not hold: owner-b"):
        asyncio.run(ModelServer(opts).start())


def test_a_model_key_for_a_model_the_config_file_lacks_is_warned_about(tmp_path: Path, onnx_model_dir: Path,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    """Most likely a typo (the model then tries the key "default"); it may also be a model that a later
    reload adds, so the server warns rather than refuses."""
    import logging

    from teeserve.serving._flags import parse_serve_args
    from teeserve.serving._server import ModelServer

    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "digits" base_path: "%s" model_platform: "onnx" } }'
                      % onnx_model_dir)
    opts = parse_serve_args([f"--model_config_file={config}", "--port=8500",
                             "--model-key=digits=owner-a", "--model-key=digts=owner-b"])
    with caplog.at_level(logging.WARNING, logger="teeserve.serving"):
        core = ModelServer(opts).make_core()
    warned = [r.getMessage() for r in caplog.records if "--model-key" in r.getMessage()]
    assert len(warned) == 1 and "digts=owner-b" in warned[0] and "no model named 'digts'" in warned[0], warned
    assert core.configured_names == {"digits"}
