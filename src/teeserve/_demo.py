"""``teeserve demo``: the whole confidential-serving flow on one machine, each role visible.

Strategy: a list of named steps run in order; each prints what it does and what it made. A failure
stops the demo with the step's name and its cause (a :class:`DemoFailed`), and every process the demo
started is stopped on the way out. Everything generated stays in one folder whose layout is printed at
the end.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import TeeserveError

__all__ = ["DemoFailed", "run_demo"]

SERVER_CN = "grpc.tf-serving.service.com"
CLIENT_CN = "client.tf-serving.service.com"
_MARKER = ".teeserve-demo"


class DemoFailed(TeeserveError):
    def __init__(self, step: str, cause: BaseException | str) -> None:
        super().__init__(f"demo step '{step}' failed: {cause}")
        self.step = step


@dataclass
class _State:
    out: Path
    model: str
    info: dict[str, Any] = field(default_factory=dict)
    cleanups: list[Callable[[], None]] = field(default_factory=list)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _role(title: str) -> None:
    _say()
    _say(f"=== {title} " + "=" * max(0, 70 - len(title)))


# ------------------------------------------------------------------ model owner

def _make_model(st: _State) -> None:
    from . import models

    plain = st.out / "owner" / "plaintext"
    if st.model == "resnet50":
        m = models.make_resnet50(plain)
        st.info["model_name"] = m.name
    else:
        m = models.make_digits(plain, samples_out=st.out / "requester" / "samples")
        st.info["model_name"] = m.name
        _say(f"  trained the digits classifier: test accuracy {m.accuracy:.3f}")
    st.info["demo_model"] = m
    _say(f"  plaintext models in {plain} (these never leave the owner's machine)")


def _make_keys(st: _State) -> None:
    from . import pf

    path = st.out / "owner" / "wrap_key"
    pf.write_wrap_key(path, pf.new_wrap_key(), force=True)
    st.info["wrap_key"] = path
    _say(f"  wrap key: {path} (16 random bytes, mode {path.stat().st_mode & 0o777:o})")


def _make_certs(st: _State) -> None:
    from . import tlsmaterial

    out = st.out / "owner" / "ssl_configure"
    mat = tlsmaterial.make_tls_material(out, server_cn=SERVER_CN, client_cn=CLIENT_CN,
                                        server_ips=("127.0.0.1",), force=True)
    st.info["tls"] = mat
    _say(f"  CA, server ({SERVER_CN}) and client ({CLIENT_CN}) certificates and ssl.cfg in {out}")
    broker = tlsmaterial.make_tls_material(st.out / "owner" / "broker_tls", server_cn="localhost",
                                           server_ips=("127.0.0.1",), force=True)
    st.info["broker_tls"] = broker
    _say(f"  the key broker's own TLS certificate (CN localhost) in {broker.out_dir}")


def _encrypt(st: _State) -> None:
    from . import pf

    key = pf.load_wrap_key(st.info["wrap_key"])
    plain = st.out / "owner" / "plaintext"
    host = st.out / "host"
    written = []
    for model_dir in sorted(p for p in plain.iterdir() if p.is_dir()):
        written += pf.encrypt_tree(model_dir, host / "models" / model_dir.name, key, overwrite=True)
    mat = st.info["tls"]
    ssl_cfg_out = host / "ssl.cfg"
    bound = pf.encrypt_file(mat.ssl_cfg, ssl_cfg_out, key, overwrite=True)
    written.append((str(ssl_cfg_out), bound))
    st.info["encrypted"] = written
    _say(f"  encrypted {len(written)} files as Gramine protected files (format 1), e.g.:")
    for out_path, bound_path in written[:3] + written[-1:]:
        _say(f"    {out_path}  (bound path {bound_path!r})")


def _decrypt_compare(st: _State) -> None:
    from . import pf

    key = pf.load_wrap_key(st.info["wrap_key"])
    plain = st.out / "owner" / "plaintext"
    host = st.out / "host" / "models"
    n = 0
    for enc in sorted(p for p in host.rglob("*") if p.is_file()):
        rel = enc.relative_to(host)
        original = (plain / rel).read_bytes()
        with pf.open_reader(enc, key, expected_path=pf.normalize_path(str(enc))) as reader:
            data = reader.read_all()
        if hashlib.sha256(data).digest() != hashlib.sha256(original).digest():
            raise DemoFailed("decrypt and compare", f"{enc}: decrypted bytes differ from {plain / rel}")
        n += 1
    _say(f"  decrypted {n} model files in memory with the path check on: all identical to the plaintext")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_argv(st: _State) -> list[str]:
    host = st.out / "host"
    return [
        f"--model_name={st.info['serve_model']}",
        f"--model_base_path={host / 'models' / st.info['serve_model']}",
        f"--port={st.info['grpc_port']}", f"--rest_api_port={st.info['rest_port']}", "--host=127.0.0.1",
        f"--ssl_config_file={host / 'ssl.cfg'}", "--require-encrypted",
        "--tensorflow_intra_op_parallelism=1", "--tensorflow_inter_op_parallelism=1",
        "--tee=sim", f"--sim-key={st.info['sim_key']}",
        f"--key-broker=localhost:{st.info['broker_port']}",
        f"--key-broker-ca={st.info['broker_tls'].ca_cert}", "--key-broker-timeout=60",
    ]


def _write_policy(st: _State) -> None:
    from .attest import sim
    from .serving._flags import parse_serve_args
    from .serving._server import measurement

    sim_dir = st.out / "owner" / "sim"
    priv, pub = sim.init_key(sim_dir, force=True)
    st.info["sim_key"] = priv
    st.info["serve_model"] = "digits-onnx" if st.model == "digits" else f"{st.info['model_name']}-onnx"
    st.info["grpc_port"], st.info["rest_port"], st.info["broker_port"] = _free_port(), _free_port(), _free_port()
    _, mr = measurement(parse_serve_args(_server_argv(st)))
    st.info["measurement"] = mr
    policy = st.out / "owner" / "policy.toml"
    policy.write_text(
        "# teeserve key-release policy made by `teeserve demo` (see docs/policy.md)\n"
        "version = 1\n\n"
        "[simulation]\n"
        "# SIMULATED attestation: acceptable for a demo on one machine, never for a real deployment.\n"
        f'trusted_keys = ["{pub}"]\n\n'
        "[secrets.default]\n"
        f'file = "{st.info["wrap_key"]}"\n'
        'tee = ["sim"]\n'
        "allow_simulation = true\n\n"
        "[[secrets.default.sim]]\n"
        f'mr_enclave = "{mr}"   # the server\'s code + configuration (teeserve serve ... --print-measurement)\n'
    )
    st.info["policy"] = policy
    _say(f"  simulation attestation key: {priv} (+ .pub.pem)")
    _say(f"  the server's measurement (code + configuration): {mr}")
    _say(f"  policy {policy}: release 'default' (the wrap key) only to that measurement; SIMULATION allowed")


def _spawn(st: _State, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    logs = st.out / "logs"
    logs.mkdir(exist_ok=True)
    log = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed by the cleanup
    proc = subprocess.Popen([sys.executable, "-m", "teeserve", *argv], stdout=log, stderr=subprocess.STDOUT,
                            env=env, cwd=st.out, start_new_session=True)

    def stop() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()

    st.cleanups.append(stop)
    st.info.setdefault("procs", {})[name] = (proc, stop)
    return proc


def _log_tail(st: _State, name: str, lines: int = 5) -> str:
    text = (st.out / "logs" / f"{name}.log").read_text(errors="replace").splitlines()
    return "\n".join("    | " + line for line in text[-lines:])


def _start_broker(st: _State) -> None:
    b = st.info["broker_tls"]
    proc = _spawn(st, "broker", [
        "broker", "--policy", str(st.info["policy"]), "--listen", f"127.0.0.1:{st.info['broker_port']}",
        "--cert", str(b.server_cert), "--key", str(b.server_key), "--audit", str(st.out / "owner" / "audit.db"),
    ])
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed("start the key broker", f"the broker exited ({proc.returncode}):\n" + _log_tail(st, "broker"))
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", st.info["broker_port"])) == 0:
                _say(f"  key broker listening on 127.0.0.1:{st.info['broker_port']} (log: logs/broker.log)")
                return
        time.sleep(0.2)
    raise DemoFailed("start the key broker", "not listening after 60 s")


def _tls_options(st: _State) -> Any:
    from .client import TlsOptions

    mat = st.info["tls"]
    return TlsOptions(ca=str(mat.ca_cert), crt=str(mat.client_cert), key=str(mat.client_key), server_name=SERVER_CN)


def _wait_ready(st: _State, proc: subprocess.Popen[bytes], name: str, timeout: float = 120) -> None:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from .client import grpc_channel

    deadline = time.monotonic() + timeout
    with grpc_channel(f"127.0.0.1:{st.info['grpc_port']}", _tls_options(st)) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise DemoFailed("start the server in the simulated TEE",
                                 f"the server exited ({proc.returncode}):\n" + _log_tail(st, name))
            try:
                resp = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1)
                if resp.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.3)
    raise DemoFailed("start the server in the simulated TEE", f"not ready after {timeout:.0f} s")


def _start_server(st: _State) -> None:
    t0 = time.monotonic()
    proc = _spawn(st, "server", ["serve", *_server_argv(st)])
    _wait_ready(st, proc, "server")
    log = (st.out / "logs" / "server.log").read_text(errors="replace")
    if "keys obtained by attestation" not in log:
        raise DemoFailed("start the server in the simulated TEE", "ready without attesting?\n" + _log_tail(st, "server"))
    _say(f"  server attested to the broker, received the wrap key, decrypted ssl.cfg and the model in memory")
    _say(f"  serving {st.info['serve_model']} on gRPC 127.0.0.1:{st.info['grpc_port']} and REST "
         f"127.0.0.1:{st.info['rest_port']}, mutual TLS on both (ready in {time.monotonic() - t0:.1f} s)")


def _bench(st: _State) -> None:
    from .client import BenchConfig, format_summary, plot, run_bench

    cfg = BenchConfig(url=f"127.0.0.1:{st.info['grpc_port']}", tls=_tls_options(st), model=st.info["serve_model"],
                      input_name="images" if st.model == "digits" else "input",
                      shape=(8, 8) if st.model == "digits" else (224, 224, 3), cnum=4,
                      loop=200 if st.model == "digits" else 5, warmup=2, verbose=False, progress=False)
    result = run_bench(cfg)
    if result.errors or not result.requests:
        raise DemoFailed("benchmark over mutual TLS", f"errors: {result.errors or 'no request succeeded'}")
    p = result.percentiles()
    _say("  " + format_summary(result))
    _say(f"  latency(ms): p50 {p['p50']:.1f}, p90 {p['p90']:.1f}, p99 {p['p99']:.1f}, max {p['max']:.1f}")
    png = st.out / "requester" / "bench.png"
    png.parent.mkdir(parents=True, exist_ok=True)
    plot(result, str(png))
    _say(f"  latency plot: {png}")


def _predict(st: _State) -> None:
    from .client import Target, get_signature, load_inputs, predict, top_k

    if st.model != "digits":
        _say("  (the ResNet-50 demo model has random weights: no meaningful class to show)")
        return
    samples = sorted((st.out / "requester" / "samples").glob("digit_*.png"))
    if not samples:
        raise DemoFailed("predict a real digit", "no sample images were written")
    image = samples[len(samples) // 2]
    label = int(image.name.split("_")[1])
    target = Target(f"127.0.0.1:{st.info['grpc_port']}", st.info["serve_model"])
    tls = _tls_options(st)
    sig = get_signature(target, tls)
    inputs = load_inputs(image=str(image), npy=None, json_input=None, input_name=None,
                         signature_inputs={k: shape for k, (_, shape) in sig.items()})
    out = predict(target, tls, inputs, {k: dt for k, (dt, _) in sig.items()})
    best = top_k(out.outputs["probabilities"], 1)[0][0]
    _say(f"  $ teeserve client predict --model {st.info['serve_model']} --image {image.relative_to(st.out)} ...")
    _say(f"  answer: {best[0]} (score {best[1]:.3f}); the image shows a {label}")
    if best[0] != label:
        raise DemoFailed("predict a real digit", f"the model answered {best[0]} for a {label}")


def _audit(st: _State) -> None:
    from .broker import AuditLog

    log = AuditLog(st.out / "owner" / "audit.db")
    try:
        rows = list(log.rows())
        n = log.verify()
    finally:
        log.close()
    for r in rows:
        meas = r["measurements"].get("mr_enclave", "")
        _say(f"  #{r['seq']} {r['decision'].upper()} secret={r['secret']} tee={r['tee']} "
             f"mr_enclave={meas[:16]}... rule={r['rule'] or '-'} {r['reason']}")
    _say(f"  audit chain verified: {n} rows")


def _denial(st: _State) -> None:
    import teeserve

    # A server whose *code* differs: the same teeserve with one changed file, imported first.
    tampered = st.out / "host" / "tampered-code"
    shutil.copytree(Path(teeserve.__file__).parent, tampered / "teeserve",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(tampered / "teeserve" / "serving" / "_server.py", "a") as fh:
        fh.write("\n# a change the model owner never reviewed\n")
    env = dict(os.environ, PYTHONPATH=str(tampered))
    # Same command line (so the same configuration): only the code differs. The keys are asked for
    # before any port is bound, so it does not collide with the server that is running.
    proc = _spawn(st, "server-tampered", ["serve", *_server_argv(st)], env=env)
    try:
        code = proc.wait(120)
    except subprocess.TimeoutExpired:
        raise DemoFailed("a server with different code is refused", "it did not stop within 120 s") from None
    if code == 0:
        raise DemoFailed("a server with different code is refused", "it started (exit 0)")
    _say(f"  a server with one changed source file attested, was DENIED and exited with status {code}:")
    _say(_log_tail(st, "server-tampered", 1))


def _stop(st: _State) -> None:
    for name in ("server", "broker"):
        proc, stop = st.info["procs"][name]
        stop()
        _say(f"  {name} stopped (exit status {proc.returncode})")
        if proc.returncode != 0:
            raise DemoFailed("stop everything", f"the {name} exited with status {proc.returncode}:\n" + _log_tail(st, name))


# ------------------------------------------------------------------ driver

def _layout(st: _State) -> None:
    _say()
    _say(f"Everything the demo made is in {st.out}/:")
    for rel, what in _LAYOUT:
        if (st.out / rel).exists():
            _say(f"  {rel:<20}  {what}")


_LAYOUT = [
    ("owner/plaintext/", "the plaintext models (model owner only)"),
    ("owner/wrap_key", "the 16-byte wrap key (0600)"),
    ("owner/ssl_configure/", "CA, server and client certificates, ssl.cfg (plaintext, owner only)"),
    ("owner/broker_tls/", "the key broker's TLS certificate and key"),
    ("owner/sim/", "the simulation attestation key pair (teeserve sim init)"),
    ("owner/policy.toml", "the key-release policy"),
    ("owner/audit.db", "the broker's audit log (hash chain: teeserve broker audit --audit ... --verify)"),
    ("host/models/", "the encrypted models, as uploaded to the TEE host"),
    ("host/ssl.cfg", "the encrypted TLS configuration"),
    ("host/tampered-code/", "the modified teeserve used to show a denial"),
    ("requester/samples/", "real digit images for `teeserve client predict --image`"),
    ("requester/bench.png", "latency over time and histogram of the benchmark"),
    ("logs/", "broker.log, server.log, server-tampered.log"),
]


STEPS: list[tuple[str, str, Callable[[_State], None]]] = [
    ("1. model owner", "make the demo model", _make_model),
    ("1. model owner", "make a wrap key", _make_keys),
    ("1. model owner", "make two-way TLS material", _make_certs),
    ("1. model owner", "encrypt the model and ssl.cfg", _encrypt),
    ("1. model owner", "decrypt and compare", _decrypt_compare),
    ("2. model owner: key broker", "write a policy pinning the server's simulated measurement", _write_policy),
    ("2. model owner: key broker", "start the key broker", _start_broker),
    ("3. TEE host", "start the server in the simulated TEE", _start_server),
    ("4. remote requester", "benchmark over mutual TLS", _bench),
    ("4. remote requester", "predict a real digit", _predict),
    ("5. model owner: audit and denial", "show the audit entries", _audit),
    ("5. model owner: audit and denial", "a server with different code is refused", _denial),
    ("5. model owner: audit and denial", "the denial in the audit", _audit),
    ("6. everyone", "stop everything", _stop),
]


def run_demo(out: str | Path, *, model: str = "digits") -> None:
    """Run every step; raises DemoFailed naming the step that failed."""
    st = _State(out=Path(out).resolve(), model=model)
    if st.out.exists() and any(st.out.iterdir()):
        if not (st.out / _MARKER).exists():
            raise DemoFailed("prepare", f"{st.out} exists and was not made by `teeserve demo`; choose another --out")
        shutil.rmtree(st.out)
    st.out.mkdir(parents=True, exist_ok=True)
    (st.out / _MARKER).write_text("made by teeserve demo; emptied by the next run\n")
    t0 = time.monotonic()
    role = None
    try:
        for i, (step_role, name, func) in enumerate(STEPS, 1):
            if step_role != role:
                role = step_role
                _role(role)
            _say(f"[{i}/{len(STEPS)}] {name}")
            try:
                func(st)
            except DemoFailed:
                raise
            except TeeserveError as exc:
                raise DemoFailed(name, exc) from exc
            except Exception as exc:  # report, do not hide: a failure names the step and its cause
                raise DemoFailed(name, f"{type(exc).__name__}: {exc}") from exc
    finally:
        for cleanup in reversed(st.cleanups):
            try:
                cleanup()
            except Exception as exc:  # keep stopping the rest
                print(f"  (cleanup: {exc})", file=sys.stderr)
    _layout(st)
    _say(f"\ndemo finished in {time.monotonic() - t0:.1f} s")
