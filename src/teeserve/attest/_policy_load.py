"""Loading a policy: teeserve's TOML format, and the reference deployment's ``ra_config.json``.

Strategy: validate everything up front and fail closed. Every table has a fixed set of keys; an
unknown key anywhere (a typo such as ``mr_enclav``, or a wished-for ``allow_debug``) is an error that
names the file and the dotted key path, as are an empty file, a missing required key and a value of
the wrong type or shape. A policy that would admit every enclave (no identity for an allowed TEE
kind, or an ``ra_config.json`` with every check "off") is refused, never read as "allow all".
The format is documented in ``docs/policy.md``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from types import MappingProxyType
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._errors import PolicyInvalid, SimulationKeyInvalid
from ._policy import SECRET_FORMATS, TCB_STATUSES, Policy, SecretPolicy, SgxIdentity, TdxIdentity

__all__ = ["load_policy", "parse_policy", "parse_ra_config", "RA_CONFIG_SECRET"]

#: the secret name an ``ra_config.json`` loaded on its own gets (Gramine's SECRET_PROVISION_SET_KEY=default)
RA_CONFIG_SECRET = "default"
_NAME = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")
_ADVISORY = re.compile(r"\AINTEL-[A-Z]+-\d+\Z")
_TEE_KINDS = ("sgx", "tdx", "sim")
_NEEDS = "an identity needs mr_enclave, or mr_signer with isv_prod_id and min_isv_svn"


class _Ctx:
    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, key: str, problem: str) -> PolicyInvalid:
        return PolicyInvalid(self.source, key, problem)

    def keys(
        self, table: Any, path: str, allowed: Iterable[str], required: Iterable[str] = ()
    ) -> dict[str, Any]:
        if not isinstance(table, dict):
            raise self.fail(path, f"must be a table, not {type(table).__name__}")
        allowed = tuple(allowed)
        for k in table:
            if k not in allowed:
                if k in ("allow_debug", "debug"):
                    raise self.fail(
                        _join(path, k), "debug enclaves and TDs are always rejected; there is no switch"
                    )
                hint = difflib.get_close_matches(k, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                raise self.fail(_join(path, k), f"unknown key{extra}; allowed: {', '.join(allowed)}")
        for k in required:
            if k not in table:
                raise self.fail(_join(path, k), "missing (required)")
        return table


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _str(ctx: _Ctx, value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ctx.fail(key, "must be a non-empty string")
    return value


def _bool(ctx: _Ctx, value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ctx.fail(key, "must be true or false")
    return value


def _int(ctx: _Ctx, value: Any, key: str, *, decimal_str: bool = False, hi: int = 0xFFFF) -> int:
    if decimal_str and isinstance(value, str) and re.fullmatch(r"[0-9]{1,5}", value):
        value = int(value)  # ra_config.json writes "0"
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= hi:
        raise ctx.fail(key, f"must be an integer in 0..{hi}")
    return value


def _str_list(ctx: _Ctx, value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) and x for x in value):
        raise ctx.fail(key, "must be a list of non-empty strings")
    return value


def _hex_set(ctx: _Ctx, value: Any, key: str, nbytes: int) -> frozenset[bytes]:
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ctx.fail(key, "must not be an empty list")
    out = set()
    for item in items:
        if not isinstance(item, str) or not re.fullmatch(rf"[0-9a-fA-F]{{{2 * nbytes}}}", item):
            raise ctx.fail(key, f"must be {2 * nbytes} hex digits (or a list of them), got {item!r}")
        out.add(bytes.fromhex(item))
    return frozenset(out)


def _sgx_identity(ctx: _Ctx, entry: Any, path: str) -> SgxIdentity:
    t = ctx.keys(entry, path, ("mr_enclave", "mr_signer", "isv_prod_id", "min_isv_svn"))

    def get(k: str, conv: Any, *extra: Any) -> Any:
        return conv(ctx, t[k], _join(path, k), *extra) if k in t else None

    ident = SgxIdentity(
        mr_enclave=get("mr_enclave", _hex_set, 32),
        mr_signer=get("mr_signer", _hex_set, 32),
        isv_prod_id=get("isv_prod_id", _int),
        min_isv_svn=get("min_isv_svn", _int),
    )
    if ident.mr_enclave is None:
        if ident.mr_signer is None:
            raise ctx.fail(path, _NEEDS)
        for k in ("isv_prod_id", "min_isv_svn"):
            if getattr(ident, k) is None:
                raise ctx.fail(_join(path, k), f"missing: {_NEEDS}")
    return ident


_U64 = re.compile(r"\A0x[0-9a-fA-F]{16}\Z")


def _u64_set(ctx: _Ctx, value: Any, key: str) -> frozenset[int]:
    """A set of 64-bit register values, each written ``0x`` + 16 hex digits, as ``teeserve attest
    describe`` prints them. The prefix is required: other tools print these fields as the quote's
    little-endian bytes, and a value read in the wrong byte order must fail to load, not silently
    deny every TD."""
    items = value if isinstance(value, list) else [value]
    if not items:
        raise ctx.fail(key, "must not be an empty list")
    out = set()
    for item in items:
        if not isinstance(item, str) or not _U64.match(item):
            raise ctx.fail(key, "must be a 64-bit value written 0x followed by 16 hex digits, as "
                                f"'teeserve attest describe' prints it (or a list of them), got {item!r}")
        out.add(int(item, 16))
    return frozenset(out)


def _tdx_identity(ctx: _Ctx, entry: Any, path: str) -> TdxIdentity:
    fields = ("mr_td", "rtmr0", "rtmr1", "rtmr2", "rtmr3", "mr_config_id", "mr_owner", "mr_owner_config")
    words = ("td_attributes", "xfam")
    t = ctx.keys(entry, path, fields + words, required=("mr_td",))
    ident = {k: _hex_set(ctx, t[k], _join(path, k), 48) for k in fields if k in t}
    ident.update({k: _u64_set(ctx, t[k], _join(path, k)) for k in words if k in t})
    return TdxIdentity(**ident)


def _entries(ctx: _Ctx, value: Any, path: str) -> list[Any]:
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ctx.fail(path, "must be a non-empty array of tables ([[...]])")
    return value


def _identities(ctx: _Ctx, t: dict[str, Any], path: str, kind: str, parse: Any) -> list[Any]:
    if kind not in t:
        return []
    entries = _entries(ctx, t[kind], f"{path}.{kind}")
    return [parse(ctx, e, f"{path}.{kind}[{i}]") for i, e in enumerate(entries)]


_SECRET_KEYS = (
    "file", "format", "tee", "tcb_statuses", "reject_advisories", "allow_simulation", "ra_config",
    "sgx", "tdx", "sim",
)  # fmt: skip


def _secret(ctx: _Ctx, name: str, table: Any, have_sim_keys: bool) -> SecretPolicy:
    path = f"secrets.{name}"
    if not _NAME.match(name):
        raise ctx.fail(path, "secret names are 1-64 characters of letters, digits, '_', '.', '-'")
    t = ctx.keys(table, path, _SECRET_KEYS, required=("file", "tee"))
    file = ctx.base_dir / _str(ctx, t["file"], _join(path, "file"))
    fmt = t.get("format", "raw")
    if fmt not in SECRET_FORMATS:
        raise ctx.fail(_join(path, "format"), f"must be one of {', '.join(SECRET_FORMATS)}, got {fmt!r}")
    tee = _str_list(ctx, t["tee"], _join(path, "tee"))
    if not tee or any(k not in _TEE_KINDS for k in tee):
        kinds = ", ".join(_TEE_KINDS)
        raise ctx.fail(_join(path, "tee"), f"must be a non-empty list of {kinds}, got {tee!r}")
    statuses = _str_list(ctx, t.get("tcb_statuses", ["UpToDate"]), _join(path, "tcb_statuses"))
    for s in statuses:
        if s == "Revoked":
            raise ctx.fail(_join(path, "tcb_statuses"), "Revoked can never be accepted")
        if s not in TCB_STATUSES:
            known = ", ".join(TCB_STATUSES)
            raise ctx.fail(_join(path, "tcb_statuses"), f"unknown TCB status {s!r}; known: {known}")
    if not statuses:
        raise ctx.fail(_join(path, "tcb_statuses"), "must not be empty (nothing could ever be accepted)")
    advisories = _str_list(ctx, t.get("reject_advisories", []), _join(path, "reject_advisories"))
    for a in advisories:
        if not _ADVISORY.match(a):
            raise ctx.fail(_join(path, "reject_advisories"), f"not an Intel advisory id: {a!r}")
    allow_sim = _bool(ctx, t.get("allow_simulation", False), _join(path, "allow_simulation"))
    sgx = _identities(ctx, t, path, "sgx", _sgx_identity)
    if "ra_config" in t:
        ra_path = ctx.base_dir / _str(ctx, t["ra_config"], _join(path, "ra_config"))
        sgx += parse_ra_config(_read_json(ra_path), source=os.fspath(ra_path))
    tdx = _identities(ctx, t, path, "tdx", _tdx_identity)
    sim = _identities(ctx, t, path, "sim", _sgx_identity)
    for kind, entries in (("sgx", sgx), ("tdx", tdx), ("sim", sim)):
        if kind in tee and not entries:
            raise ctx.fail(_join(path, kind), f"tee lists {kind!r} but no {kind} identity is given "
                                              "(a policy never admits any enclave)")  # fmt: skip
        if entries and kind not in tee:
            raise ctx.fail(_join(path, "tee"), f"{kind} identities are given but tee does not list {kind!r}")
    if "sim" in tee and not allow_sim:
        problem = "tee lists 'sim': set allow_simulation = true to mean it"
        raise ctx.fail(_join(path, "allow_simulation"), problem)
    if allow_sim and not have_sim_keys:
        problem = f"{path} allows simulation but no simulation key is trusted"
        raise ctx.fail("simulation.trusted_keys", problem)
    return SecretPolicy(
        name=name, file=file, format=fmt, tee=frozenset(tee), tcb_statuses=frozenset(statuses),
        reject_advisories=frozenset(advisories), allow_simulation=allow_sim,
        sgx=tuple(sgx), tdx=tuple(tdx), sim=tuple(sim),
    )  # fmt: skip


def parse_policy(doc: Any, *, source: str = "<policy>", base_dir: str | os.PathLike[str] = ".") -> Policy:
    """Validate a decoded TOML document into a :class:`Policy` (relative paths are against ``base_dir``).

    Raises:
        PolicyInvalid: any problem, naming ``source`` and the dotted key.
    """
    from . import sim

    ctx = _Ctx(source, Path(base_dir))
    if not doc:
        raise ctx.fail("", "empty policy (it must name at least one secret)")
    t = ctx.keys(doc, "", ("version", "simulation", "secrets"), required=("version", "secrets"))
    if t["version"] != 1 or isinstance(t["version"], bool):
        raise ctx.fail("version", f"must be 1, got {t['version']!r}")
    keys: list[Any] = []
    if "simulation" in t:
        s = ctx.keys(t["simulation"], "simulation", ("trusted_keys",), required=("trusted_keys",))
        for i, rel in enumerate(_str_list(ctx, s["trusted_keys"], "simulation.trusted_keys")):
            try:
                keys.append(sim.load_public_key(ctx.base_dir / rel))
            except SimulationKeyInvalid as exc:
                raise ctx.fail(f"simulation.trusted_keys[{i}]", str(exc)) from exc
    secrets_table = t["secrets"]
    if not isinstance(secrets_table, dict) or not secrets_table:
        raise ctx.fail("secrets", "must name at least one secret ([secrets.NAME])")
    secrets = {name: _secret(ctx, name, table, bool(keys)) for name, table in secrets_table.items()}
    return Policy(source, MappingProxyType(secrets), tuple(keys), frozenset(sim.key_id(k) for k in keys))


_RA_FLAGS = ("verify_mr_enclave", "verify_mr_signer", "verify_isv_prod_id", "verify_isv_svn")
_RA_FIELDS = ("mr_enclave", "mr_signer", "isv_prod_id", "isv_svn")


def parse_ra_config(doc: Any, *, source: str = "ra_config.json") -> list[SgxIdentity]:
    """The SGX identities of the reference deployment's ``ra_config.json`` allow-list.

    ``verify_*`` must be exactly "on" or "off" (a prefix such as "o" is an error); every field whose
    check is "on" must be present in each ``mrs`` entry; ``isv_svn`` becomes a **minimum**. A config
    that checks neither MRENCLAVE nor MRSIGNER is refused (it would admit any enclave), and so is one
    that checks MRSIGNER without MRENCLAVE, ISV_PROD_ID and ISV_SVN (every enclave of that signer).

    Raises:
        PolicyInvalid: naming ``source`` and the key.
    """
    ctx = _Ctx(source, Path("."))
    if not doc:
        raise ctx.fail("", "empty ra_config")
    t = ctx.keys(doc, "", (*_RA_FLAGS, "mrs"), required=(*_RA_FLAGS, "mrs"))
    on = {}
    for flag in _RA_FLAGS:
        if t[flag] not in ("on", "off"):
            raise ctx.fail(flag, f'must be exactly "on" or "off", got {t[flag]!r}')
        on[flag.removeprefix("verify_")] = t[flag] == "on"
    if not on["mr_enclave"] and not on["mr_signer"]:
        if any(on.values()):
            which = "neither verify_mr_enclave nor verify_mr_signer is on"
        else:
            which = "every check is off"
        raise ctx.fail("", f"{which}: this would admit any enclave, refused")
    if not on["mr_enclave"] and not (on["isv_prod_id"] and on["isv_svn"]):
        # As in a TOML policy (_NEEDS): a signer alone admits every product and every version of it,
        # old vulnerable ones included.
        raise ctx.fail("", "verify_mr_signer without verify_mr_enclave needs verify_isv_prod_id and "
                           "verify_isv_svn on too: a signer alone would admit every enclave it ever signed, "
                           "at any version")
    mrs = t["mrs"]
    if not isinstance(mrs, list) or not mrs:
        raise ctx.fail("mrs", "must be a non-empty list of measurement entries")
    out = []
    for i, entry in enumerate(mrs):
        path = f"mrs[{i}]"
        e = ctx.keys(entry, path, _RA_FIELDS, required=[f for f in _RA_FIELDS if on[f]])
        # every present field must be well-formed (even when its check is off); only "on" ones count
        parsed = {
            "mr_enclave": lambda v, k: _hex_set(ctx, v, k, 32),
            "mr_signer": lambda v, k: _hex_set(ctx, v, k, 32),
            "isv_prod_id": lambda v, k: _int(ctx, v, k, decimal_str=True),
            "isv_svn": lambda v, k: _int(ctx, v, k, decimal_str=True),
        }
        val = {f: parsed[f](e[f], f"{path}.{f}") for f in _RA_FIELDS if f in e}
        out.append(
            SgxIdentity(
                mr_enclave=val["mr_enclave"] if on["mr_enclave"] else None,
                mr_signer=val["mr_signer"] if on["mr_signer"] else None,
                isv_prod_id=val["isv_prod_id"] if on["isv_prod_id"] else None,
                min_isv_svn=val["isv_svn"] if on["isv_svn"] else None,  # a minimum, never equality
            )
        )
    return out


def _read_json(path: Path) -> Any:
    try:
        text = path.read_text("utf-8")
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise PolicyInvalid(os.fspath(path), "", f"cannot read: {reason}") from exc
    if not text.strip():
        raise PolicyInvalid(os.fspath(path), "", "empty file")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolicyInvalid(os.fspath(path), "", f"not valid JSON: {exc.msg} at line {exc.lineno}") from exc
    except RecursionError:
        raise PolicyInvalid(os.fspath(path), "", "not a usable JSON document: nested too deeply") from None


def load_policy(path: str | os.PathLike[str], *, secret_file: str | os.PathLike[str] | None = None) -> Policy:
    """Load a policy file: teeserve TOML, or (``*.json``) the reference deployment's ``ra_config.json``.

    An ``ra_config.json`` becomes one secret named ``default`` (SGX only, TCB ``UpToDate``) whose key
    file is ``secret_file`` or, as in the reference deployment, ``wrap_key`` next to the config.

    Raises:
        PolicyInvalid: the file is missing, empty, malformed, or has an unknown key (named).
    """
    p = Path(path)
    source = os.fspath(p)
    if p.suffix.lower() == ".json":
        identities = parse_ra_config(_read_json(p), source=source)
        file = Path(secret_file) if secret_file is not None else p.parent / "wrap_key"
        sp = SecretPolicy(RA_CONFIG_SECRET, file, "raw", frozenset({"sgx"}), sgx=tuple(identities))
        return Policy(source, MappingProxyType({RA_CONFIG_SECRET: sp}))
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise PolicyInvalid(source, "", f"cannot read: {exc.strerror}") from exc
    if not data.strip():
        raise PolicyInvalid(source, "", "empty policy file")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise PolicyInvalid(source, "", f"not valid TOML: {exc}") from exc
    except RecursionError:  # arrays nested thousands deep
        raise PolicyInvalid(source, "", "not a usable TOML document: nested too deeply") from None
    if secret_file is not None:
        raise PolicyInvalid(source, "", "--secret-file applies to an ra_config.json policy only; a TOML policy "
                            "names each secret's file in [secrets.NAME] file = ...")
    return parse_policy(doc, source=source, base_dir=p.parent)
