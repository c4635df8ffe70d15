"""``teeserve demo``: the whole confidential-serving flow on one machine, each role visible.

Strategy: a list of named steps run in order; each prints what it does and what it made. A failure
stops the demo with the step's name and its cause (a :class:`DemoFailed`), and every process the demo
started is stopped on the way out. Everything generated stays in one folder whose layout is printed at
the end.
"""

from __future__ import annotations

import hashlib
import shutil
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


# ------------------------------------------------------------------ driver

def _layout(st: _State) -> None:
    _say()
    _say(f"Everything the demo made is in {st.out}/:")
    _say("  owner/plaintext/      the plaintext models (model owner only)")
    _say("  owner/wrap_key        the 16-byte wrap key (0600)")
    _say("  owner/ssl_configure/  CA, server and client certificates, ssl.cfg (plaintext, owner only)")
    _say("  host/models/          the encrypted models, as uploaded to the TEE host")
    _say("  host/ssl.cfg          the encrypted TLS configuration")
    _say("  requester/samples/    real digit images for `teeserve client predict --image`")


STEPS: list[tuple[str, str, Callable[[_State], None]]] = [
    ("model owner", "make the demo model", _make_model),
    ("model owner", "make a wrap key", _make_keys),
    ("model owner", "make two-way TLS material", _make_certs),
    ("model owner", "encrypt the model and ssl.cfg", _encrypt),
    ("model owner", "decrypt and compare", _decrypt_compare),
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
