"""The Gramine manifest template of ``teeserve serve``: valid TOML, the right keys and paths per key path,
the gramine-manifest placeholders only, bad input refused, and ``teeserve gramine manifest`` end to end
(bound-path check on real protected files, no output on failure)."""

from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import jinja2
import pytest

from teeserve import deploy, pf
from teeserve.cli import main

from _deploy_helpers import CONTAINER_PYTHON, REPO, onnx_model_bytes

KEY = bytes(range(16))
EXAMPLE = REPO / "deploy" / "gramine" / "teeserve.manifest.template"


def example_spec(**changes: Any) -> deploy.ManifestSpec:
    values: dict[str, Any] = dict(
        model_name="digits", model_dir="/srv/teeserve/models/digits", ssl_config="/srv/teeserve/tls/ssl.cfg",
        broker="teeserve-broker:4433", broker_ca="/opt/teeserve/broker-ca.pem",
    )
    values.update(changes)
    return deploy.ManifestSpec(**values)


def render(**changes: Any) -> dict[str, Any]:
    return tomllib.loads(deploy.render_manifest(example_spec(**changes), CONTAINER_PYTHON))


def gramine_manifest(text: str) -> dict[str, Any]:
    """What gramine-manifest does to the template, with stand-in values for Gramine's own paths."""

    class Gramine:
        libos = "/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"

        @staticmethod
        def runtimedir(libc: str = "glibc") -> str:
            return f"/usr/lib/x86_64-linux-gnu/gramine/runtime/{libc}"

    env = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return tomllib.loads(env.from_string(text).render(gramine=Gramine()))


def mounts(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["path"]: m for m in doc["fs"]["mounts"]}


def test_gramine_mounts_manifest_has_the_keys_of_the_issue() -> None:
    doc = render(enclave_size="8G", threads=96)
    assert doc["libos"]["entrypoint"] == "/opt/teeserve/venv/bin/python3"
    assert doc["loader"]["entrypoint"]["uri"] == "file:{{ gramine.libos }}"
    assert "insecure__use_cmdline_argv" not in doc["loader"]
    argv = doc["loader"]["argv"]
    assert argv[:8] == ["/opt/teeserve/venv/bin/python3", "-m", "teeserve", "gramine", "provision",
                        "--mode", "gramine-mounts", "--"]
    assert argv[8] == "serve"
    assert "--model_name=digits" in argv and "--model_base_path=/srv/teeserve/models/digits" in argv
    assert "--ssl_config_file=/srv/teeserve/tls/ssl.cfg" in argv
    assert doc["sgx"]["remote_attestation"] == "dcap"
    assert doc["sgx"]["enclave_size"] == "8G" and doc["sgx"]["max_threads"] == 96
    assert doc["sgx"]["debug"] is False
    assert doc["sys"]["stack"]["size"] == "4M"
    assert doc["sys"]["enable_sigterm_injection"] is True
    m = mounts(doc)
    for path in ("/srv/teeserve/models/digits", "/srv/teeserve/tls/ssl.cfg"):
        assert m[path] == {"type": "encrypted", "path": path, "uri": f"file:{path}", "key_name": "default"}
    assert m["/tmp"]["type"] == "tmpfs"
    env = doc["loader"]["env"]
    assert env["SECRET_PROVISION_SERVERS"] == "teeserve-broker:4433"
    assert env["SECRET_PROVISION_CA_CHAIN_PATH"] == "/opt/teeserve/broker-ca.pem"
    assert env["SECRET_PROVISION_SET_KEY"] == "default"
    assert "LD_PRELOAD" not in env and "SECRET_PROVISION_CONSTRUCTOR" not in env
    trusted = doc["sgx"]["trusted_files"]
    for uri in ("file:/usr/lib/python3.11/", "file:/opt/teeserve/venv/", "file:/opt/teeserve/broker-ca.pem",
                "file:{{ gramine.runtimedir() }}/", "file:/lib/x86_64-linux-gnu/"):
        assert uri in trusted
    # the venv directory (site-packages, pyvenv.cfg, the interpreter copy) is trusted as a whole
    assert any(u == "file:/opt/teeserve/venv/" for u in trusted)
    assert not any("/srv/teeserve" in u for u in trusted + doc["sgx"]["allowed_files"])


def test_gramine_provisioner_preloads_libsecret_prov_attest() -> None:
    doc = render(provisioner="gramine", key_name="model")
    env = doc["loader"]["env"]
    assert env["LD_PRELOAD"] == "libsecret_prov_attest.so"
    assert env["SECRET_PROVISION_CONSTRUCTOR"] == "1"
    assert env["SECRET_PROVISION_SET_KEY"] == "model"
    assert doc["loader"]["argv"][3] == "serve"  # the key is installed before main(), no wrapper
    assert {m.get("key_name") for m in doc["fs"]["mounts"] if m.get("type") == "encrypted"} == {"model"}


def test_in_process_manifest_keeps_protected_files_on_plain_mounts() -> None:
    doc = render(mode="in-process")
    m = mounts(doc)
    assert not [x for x in doc["fs"]["mounts"] if x.get("type") == "encrypted"]
    assert m["/srv/teeserve/models/digits"]["uri"] == "file:/srv/teeserve/models/digits"
    assert m["/srv/teeserve/models/digits"].get("type", "chroot") == "chroot"
    assert set(doc["sgx"]["allowed_files"]) == {"file:/srv/teeserve/models/digits/", "file:/srv/teeserve/tls/ssl.cfg"}
    assert doc["loader"]["argv"][5:8] == ["--mode", "in-process", "--"]
    assert "SECRET_PROVISION_SET_KEY" not in doc["loader"]["env"]
    assert doc["loader"]["env"]["SECRET_PROVISION_SERVERS"] == "teeserve-broker:4433"


def test_only_gramine_placeholders_are_left_and_gramine_manifest_gives_valid_toml() -> None:
    for mode in deploy.MODES:
        text = deploy.render_manifest(example_spec(mode=mode), CONTAINER_PYTHON)
        placeholders = set(re.findall(r"\{\{(.*?)\}\}", text))
        assert {p.strip() for p in placeholders} == {"gramine.libos", "gramine.runtimedir()"}
        assert "{%" not in text and "{#" not in text
        final = gramine_manifest(text)
        assert final["loader"]["entrypoint"]["uri"] == "file:/usr/lib/x86_64-linux-gnu/gramine/libsysdb.so"
        assert mounts(final)["/lib"]["uri"] == "file:/usr/lib/x86_64-linux-gnu/gramine/runtime/glibc"


def test_checked_in_example_is_what_the_renderer_gives() -> None:
    text = deploy.render_manifest(example_spec(), CONTAINER_PYTHON, version="0.1.0")
    assert EXAMPLE.read_text() == text, (
        "deploy/gramine/teeserve.manifest.template is stale; regenerate it with "
        "tests/deploy/test_manifest.py::example_spec rendered for CONTAINER_PYTHON"
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_dir": "models/digits"}, "--model-dir models/digits: must be an absolute path"),
        ({"ssl_config": "ssl.cfg"}, "--ssl-config ssl.cfg: must be an absolute path"),
        ({"enclave_size": "3G"}, "power of two"),
        ({"enclave_size": "lots"}, "--enclave-size 'lots'"),
        ({"threads": 2}, "--threads 2"),
        ({"broker": "no-port"}, "--broker 'no-port'"),
        ({"model_dir": "/srv/{{ evil }}"}, "template delimiters"),
        ({"mode": "in-process", "provisioner": "gramine"}, "--provisioner gramine needs --mode gramine-mounts"),
        ({"key_name": "a/b"}, "--key-name 'a/b'"),
        ({"model_name": "bad name"}, "--model-name 'bad name'"),
        ({"grpc_port": 9000, "rest_port": 9000}, "must differ"),
        ({"serve_args": ("--no_such_flag=1",)}, "--serve-arg: teeserve serve would refuse its arguments: "
                                                "unrecognized arguments: --no_such_flag=1"),
        ({"serve_args": ("--rest_api_timeout_in_ms=0",)}, "--rest_api_timeout_in_ms must be positive"),
        ({"serve_args": ("--workers=2",)}, "one worker per enclave"),
        ({"serve_args": ("--worker-cpu-affinity=auto",)}, "--serve-arg --worker-cpu-affinity: it pins --workers"),
        ({"serve_args": ("--model_base_path=/etc",)}, "--serve-arg --model_base_path=/etc: --model_base_path is set "
                                                       "by the manifest's own options (--model-dir)"),
        ({"serve_args": ("--require-encrypted=false",)}, "--require-encrypted is set by the manifest"),
        ({"serve_args": ("--ssl_config_file", "/x")}, "--ssl_config_file is set by the manifest"),
        ({"model_dir": "/srv/m/\x7fd"}, "a control character"),
        ({"broker": "b\r:4433"}, "a control character"),
        ({"serve_args": ("--worker-connection-balance=round-robin",)},
         "--serve-arg --worker-connection-balance: it deals connections to --workers"),
    ],
)
def test_bad_input_is_refused_with_the_option_named(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(deploy.ManifestInputError) as info:
        example_spec(**changes)
    assert message in str(info.value)
    assert info.value.exit_code == 2


def test_good_serve_args_are_accepted() -> None:
    spec = example_spec(serve_args=("--enable_batching", "--rest_api_timeout_in_ms=5000"))
    assert spec.serve_args == ("--enable_batching", "--rest_api_timeout_in_ms=5000")


def test_models_inside_the_venv_are_refused() -> None:
    with pytest.raises(deploy.ManifestInputError, match="overlaps a trusted directory"):
        deploy.render_manifest(example_spec(model_dir="/opt/teeserve/venv/models"), CONTAINER_PYTHON)


@pytest.mark.parametrize(("changes", "message"), [
    ({"model_dir": "/opt/teeserve"}, "--model-dir /opt/teeserve: overlaps a trusted directory"),  # holds the venv
    ({"model_dir": "/"}, "--model-dir /: overlaps a trusted directory"),
    ({"ssl_config": "/opt/teeserve/broker-ca.pem"}, "--ssl-config /opt/teeserve/broker-ca.pem: overlaps"),
    ({"extra_trusted": ("/srv/teeserve/models",)}, "--trust /srv/teeserve/models: overlaps --model-dir"),
    ({"extra_trusted": ("/srv/teeserve/models/digits/1/model.onnx",)}, "--trust /srv/teeserve/models/digits/1/"),
])
def test_secret_paths_overlapping_trusted_ones_either_way_are_refused(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(deploy.ManifestInputError, match=re.escape(message)):
        deploy.render_manifest(example_spec(**changes), CONTAINER_PYTHON)


def test_in_process_mode_has_the_server_refuse_plaintext_models_and_ssl_cfg() -> None:
    """The host controls allowed files: a plaintext model or ssl.cfg put in their place must be refused
    by teeserve, which decrypts them itself in this mode (under gramine-mounts Gramine refuses them)."""
    argv = render(mode="in-process")["loader"]["argv"]
    assert "--require-encrypted" in argv[argv.index("serve"):]
    assert "--require-encrypted" not in render()["loader"]["argv"]  # Gramine hands teeserve plaintext there


def test_inspect_python_describes_this_venv() -> None:
    py = deploy.inspect_python(sys.executable)
    assert py.version == "%d.%d" % sys.version_info[:2]
    assert py.prefix == os.path.normpath(sys.prefix)
    assert Path(py.stdlib, "os.py").is_file()
    assert Path(py.entrypoint).is_file() and not Path(py.entrypoint).is_symlink()
    assert any(Path(p).is_dir() for p in py.site_packages)
    text = deploy.render_manifest(example_spec(), py)
    doc = tomllib.loads(text)
    assert doc["libos"]["entrypoint"] == py.entrypoint
    assert doc["loader"]["argv"][0] == py.argv0
    trusted = doc["sgx"]["trusted_files"]
    assert f"file:{py.prefix}/" in trusted
    assert any(py.stdlib == u.removeprefix("file:").rstrip("/") or py.stdlib.startswith(u.removeprefix("file:"))
               for u in trusted)


def test_inspect_python_rejects_a_non_interpreter(tmp_path: Path) -> None:
    fake = tmp_path / "python3"
    fake.write_text("#!/bin/sh\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(deploy.PythonLayoutError, match="python3"):
        deploy.inspect_python(fake)
    with pytest.raises(deploy.PythonLayoutError, match="no such file"):
        deploy.inspect_python(tmp_path / "missing")


# --- the command ---------------------------------------------------------------------------------------


def _layout(tmp_path: Path, bound_to: Path | None = None, plaintext: bool = False) -> tuple[Path, Path]:
    """An encrypted model tree and ssl.cfg under tmp_path/srv, bound to their paths (or ``bound_to``)."""
    srv = tmp_path / "srv"
    model = srv / "models" / "digits"
    (model / "1").mkdir(parents=True)
    target = model / "1" / "model.onnx"
    data = onnx_model_bytes()
    if plaintext:
        target.write_bytes(data)
    else:
        target.write_bytes(pf.encrypt_bytes(data, KEY, os.fspath(bound_to or target)))
    ssl_cfg = srv / "tls" / "ssl.cfg"
    ssl_cfg.parent.mkdir(parents=True)
    ssl_cfg.write_bytes(pf.encrypt_bytes(b"server_key: ''\n", KEY, os.fspath(ssl_cfg)))
    keyfile = tmp_path / "wrap_key"
    pf.write_wrap_key(keyfile, KEY)
    return model, ssl_cfg


def _cmd(tmp_path: Path, model: Path, ssl_cfg: Path, *extra: str) -> list[str]:
    return ["gramine", "manifest", "--model-dir", os.fspath(model), "--model-name", "digits",
            "--ssl-config", os.fspath(ssl_cfg), "--broker", "teeserve-broker:4433",
            "--broker-ca", "/opt/teeserve/broker-ca.pem", "-o", os.fspath(tmp_path / "out" / "teeserve.manifest.template"),
            *extra]


def test_cli_checks_bound_paths_with_the_key_and_prints_next_steps(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path)
    rc = main(_cmd(tmp_path, model, ssl_cfg, "--wrap-key", os.fspath(tmp_path / "wrap_key"),
                   "--enclave-size", "4G", "--threads", "64"))
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "bound-path rule:" in out
    assert f"{model}/1/model.onnx: bound to its host path" in out
    assert f"{ssl_cfg}: bound to its host path" in out
    for step in ("gramine-manifest", "gramine-sgx-sign", "gramine-sgx-sigstruct-view", "mr_enclave",
                 "[[secrets.default.sgx]]", "gramine-sgx teeserve"):
        assert step in out
    doc = tomllib.loads((tmp_path / "out" / "teeserve.manifest.template").read_text())
    assert mounts(doc)[os.fspath(model)]["type"] == "encrypted"
    assert KEY.hex() not in (tmp_path / "out" / "teeserve.manifest.template").read_text()
    assert "bound path not checked" not in err


def test_cli_refuses_files_bound_to_another_path_and_writes_nothing(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path, bound_to=Path("models/digits/1/model.onnx"))
    rc = main(_cmd(tmp_path, model, ssl_cfg, "--wrap-key", os.fspath(tmp_path / "wrap_key")))
    err = capsys.readouterr().err
    assert rc != 0
    assert "bound to 'models/digits/1/model.onnx'" in err and "--host-prefix" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cli_refuses_plaintext_models(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path, plaintext=True)
    rc = main(_cmd(tmp_path, model, ssl_cfg))
    assert rc != 0
    assert "not a Gramine protected file" in capsys.readouterr().err
    assert not (tmp_path / "out" / "teeserve.manifest.template").exists()


def test_cli_without_key_warns_that_paths_were_not_checked(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path)
    rc = main(_cmd(tmp_path, model, ssl_cfg, "--mode", "in-process"))
    out, err = capsys.readouterr()
    assert rc == 0
    assert "bound path not checked" in err and f"{model}/1/model.onnx" in err
    doc = tomllib.loads((tmp_path / "out" / "teeserve.manifest.template").read_text())
    assert f"file:{model}/" in doc["sgx"]["allowed_files"]


def test_cli_does_not_overwrite_without_force(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path)
    out = tmp_path / "out" / "teeserve.manifest.template"
    out.parent.mkdir()
    out.write_text("keep me")
    assert main(_cmd(tmp_path, model, ssl_cfg)) != 0
    assert "already exists" in capsys.readouterr().err
    assert out.read_text() == "keep me"
    assert main([*_cmd(tmp_path, model, ssl_cfg), "--force"]) == 0
    tomllib.loads(out.read_text())


def test_cli_bad_option_exits_2(tmp_path: Path, capsys: Any) -> None:
    model, ssl_cfg = _layout(tmp_path)
    assert main([*_cmd(tmp_path, model, ssl_cfg), "--enclave-size", "5G"]) == 2
    assert "--enclave-size 5G" in capsys.readouterr().err
