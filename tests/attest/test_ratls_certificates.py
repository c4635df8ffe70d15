"""RA-TLS certificates: exact bytes against gramine-formats.md §3.1–§3.3, round trips with the
simulated TEE, and the negative cases of §3.4 (each checked with certificates forged here)."""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID, SignatureAlgorithmOID
from hypothesis import given, settings
from hypothesis import strategies as st

from teeserve import TeeserveError
from teeserve.attest import ratls, sim
from teeserve.attest.evidence import SimProvider
from teeserve.attest.ratls import (
    KeyBindingMismatch,
    MalformedCertificate,
    MalformedEvidence,
    MissingEvidence,
    MissingPubkeyHash,
    RaTlsError,
    UnsupportedKeyType,
)

RD = 368  # report data offset in an SGX v3 quote
LEGACY_OID_DER = bytes.fromhex("060B06092A864886F84D8A3906")  # §3.2, as Gramine emits it
INTENDED_OID_DER = bytes.fromhex("06092A864886F84D8A3906")
DICE_OID_DER = bytes.fromhex("0606678105050409")  # §3.3


@pytest.fixture(scope="module")
def sim_keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return sim.init_key(tmp_path_factory.mktemp("simkey"))


@pytest.fixture(scope="module")
def provider(sim_keys: tuple[Path, Path]) -> SimProvider:
    return SimProvider(sim_keys[0], mr_enclave=b"\xaa" * 32)


@pytest.fixture(scope="module")
def trusted(sim_keys: tuple[Path, Path]) -> list[Any]:
    return [sim.load_public_key(sim_keys[1])]


@pytest.fixture(scope="module")
def p384_creds(provider: SimProvider) -> ratls.RaTlsCredentials:
    return ratls.make_certificate(provider)


def spki_of(key: Any) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def der_len(n: int) -> bytes:
    return bytes([0x82]) + n.to_bytes(2, "big")


# -- exact bytes -----------------------------------------------------------------------------------


def test_profile_exact_bytes(p384_creds: ratls.RaTlsCredentials) -> None:
    cert = x509.load_der_x509_certificate(p384_creds.cert_der)
    expected_name = bytes.fromhex(
        "3039"  # SEQUENCE of 3 RDNs, 57 bytes
        "310e300c06035504030c055241544c53"  # CN=RATLS (UTF8String)
        "311a3018060355040a0c11" + b"GramineDevelopers".hex()  # O (UTF8String)
        + "310b3009060355040613025553"  # C=US (PrintableString)
    )
    assert cert.subject.public_bytes() == expected_name
    assert cert.issuer.public_bytes() == expected_name
    assert cert.version is x509.Version.v3 and cert.serial_number == 1
    assert b"\x17\x0d010101000000Z" in p384_creds.cert_der  # UTCTime notBefore
    assert b"\x17\x0d301231235959Z" in p384_creds.cert_der  # UTCTime notAfter
    assert cert.signature_algorithm_oid == SignatureAlgorithmOID.ECDSA_WITH_SHA256
    pub = cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, ec.SECP384R1)
    spki = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert len(spki) == 120

    exts = list(cert.extensions)
    assert [e.oid.dotted_string for e in exts] == [
        "2.5.29.19", "2.5.29.14", "2.5.29.35", "0.6.9.42.840.113741.1337.6", "2.23.133.5.4.9",
    ]  # fmt: skip
    assert not any(e.critical for e in exts)
    assert exts[0].value == x509.BasicConstraints(ca=False, path_length=None)
    ski = exts[1].value.digest
    assert exts[2].value == x509.AuthorityKeyIdentifier(ski, None, None)
    assert ski == hashlib.sha1(pub.public_bytes(serialization.Encoding.X962,
                                                serialization.PublicFormat.UncompressedPoint)).digest()

    # legacy extension: the quirky OID bytes, then OCTET STRING 04 82 hh ll + quote over SHA-256(SPKI)‖0
    quote = exts[3].value.value
    assert LEGACY_OID_DER + b"\x04" + der_len(len(quote)) + quote in p384_creds.cert_der
    assert quote[RD : RD + 64] == hashlib.sha256(spki).digest() + bytes(32)

    # DICE extension: bytes built from the §3.3 table, not from cbor2
    value = exts[4].value.value
    assert DICE_OID_DER + b"\x04" + der_len(len(value)) + value in p384_creds.cert_der
    hash_entry = bytes.fromhex("82015820") + hashlib.sha256(spki).digest()
    claims = bytes.fromhex("a16b") + b"pubkey-hash" + bytes.fromhex("5824") + hash_entry
    assert len(hash_entry) == 36 and len(claims) == 51
    quote2 = value[7 : 7 + int.from_bytes(value[5:7], "big")]
    head = bytes.fromhex("d9ea6082") + b"\x59" + len(quote2).to_bytes(2, "big")
    assert value == head + quote2 + b"\x58\x33" + claims
    assert quote2[RD : RD + 64] == hashlib.sha256(claims).digest() + bytes(32)
    assert quote2 != quote  # a second, separate quote


def test_encoded_oid_is_gramines() -> None:
    # the DER of the OID object cryptography emits for 0.6.9.42.840.113741.1337.6
    cert_oid = ratls.LEGACY_QUOTE_OID
    assert cert_oid.dotted_string == "0.6.9.42.840.113741.1337.6"
    key = ec.generate_private_key(ec.SECP256R1())
    der = _forge(key, extensions=[(cert_oid, b"\x00" * 300)]).public_bytes(serialization.Encoding.DER)
    assert LEGACY_OID_DER + b"\x04\x82\x01\x2c" in der


@pytest.mark.parametrize(
    ("key_type", "curve_or_size", "sig_oid"),
    [
        ("ec-p384", ec.SECP384R1, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        ("ec-p256", ec.SECP256R1, SignatureAlgorithmOID.ECDSA_WITH_SHA256),
        ("rsa-3072", 3072, SignatureAlgorithmOID.RSA_WITH_SHA256),
    ],
)
def test_round_trip_each_key_type(provider, trusted, key_type, curve_or_size, sig_oid) -> None:
    creds = ratls.make_certificate(provider, key_type=key_type)
    assert creds.key_type == key_type
    cert = x509.load_pem_x509_certificate(creds.cert_pem)
    assert cert.public_bytes(serialization.Encoding.DER) == creds.cert_der
    assert cert.signature_algorithm_oid == sig_oid
    pub = cert.public_key()
    if key_type == "rsa-3072":
        assert isinstance(pub, rsa.RSAPublicKey) and pub.key_size == 3072 and pub.public_numbers().e == 65537
        assert len(spki_of(serialization.load_pem_private_key(creds.key_pem, None))) == 422
    else:
        assert isinstance(pub, ec.EllipticCurvePublicKey) and isinstance(pub.curve, curve_or_size)
    key = serialization.load_pem_private_key(creds.key_pem, None)
    assert spki_of(key) == pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    evidence = ratls.verify_certificate(creds.cert_der)
    assert (evidence.scheme, evidence.key_type) == ("dice", key_type)
    verified = sim.verify_quote(evidence.quote, trusted)
    assert verified.simulated and verified.sgx is not None and verified.sgx.mr_enclave == b"\xaa" * 32
    assert evidence.claims is not None and "pubkey-hash" in evidence.claims


def test_legacy_only_and_dice_only(provider, trusted) -> None:
    legacy = ratls.make_certificate(provider, dice=False)
    ev = ratls.verify_certificate(legacy.cert_der)
    assert ev.scheme == "legacy"
    assert sim.verify_quote(ev.quote, trusted).report_data == hashlib.sha256(ev.spki_der).digest() + bytes(32)
    cert = x509.load_der_x509_certificate(legacy.cert_der)
    assert [e.oid for e in cert.extensions][-1] == ratls.LEGACY_QUOTE_OID

    dice = ratls.make_certificate(provider, legacy=False)
    assert ratls.verify_certificate(dice.cert_pem).scheme == "dice"
    assert ratls.extract_quote(dice.cert_der) == ratls.verify_certificate(dice.cert_der).quote
    with pytest.raises(ValueError, match="at least one"):
        ratls.make_certificate(provider, legacy=False, dice=False)
    with pytest.raises(ValueError, match="key type"):
        ratls.make_certificate(provider, key_type="ec-p521")


def test_credentials_do_not_show_key(p384_creds: ratls.RaTlsCredentials) -> None:
    assert "PRIVATE" not in repr(p384_creds) and p384_creds.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_validity_override_and_env(provider) -> None:
    nb = dt.datetime(2024, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    na = dt.datetime(2025, 5, 6, 7, 8, 9, tzinfo=dt.timezone.utc)
    creds = ratls.make_certificate(provider, key_type="ec-p256", dice=False, not_before=nb, not_after=na)
    cert = x509.load_der_x509_certificate(creds.cert_der)
    assert (cert.not_valid_before_utc, cert.not_valid_after_utc) == (nb, na)
    with pytest.raises(ValueError, match="not after"):
        ratls.make_certificate(provider, not_before=na, not_after=nb)
    assert ratls.validity_from_env({}) == (ratls.DEFAULT_NOT_BEFORE, ratls.DEFAULT_NOT_AFTER)
    env = {
        "RA_TLS_CERT_TIMESTAMP_NOT_BEFORE": "20240506070809",
        "RA_TLS_CERT_TIMESTAMP_NOT_AFTER": "20250506070809",
    }
    assert ratls.validity_from_env(env) == (nb, na)
    for bad in ("2024", "2024050607080x", "20241306070809"):
        with pytest.raises(ValueError, match="RA_TLS_CERT_TIMESTAMP_NOT_BEFORE"):
            ratls.validity_from_env({"RA_TLS_CERT_TIMESTAMP_NOT_BEFORE": bad})


def test_extract_quote(provider, p384_creds) -> None:
    """The quote verify_certificate checks (DICE first, as Gramine's verifier), so that an audit record
    of a denial never shows another quote than the one judged."""
    legacy_quote = next(
        e.value.value for e in x509.load_der_x509_certificate(p384_creds.cert_der).extensions
        if e.oid == ratls.LEGACY_QUOTE_OID
    )  # fmt: skip
    checked = ratls.verify_certificate(p384_creds.cert_der)
    assert checked.scheme == "dice" and checked.quote != legacy_quote  # both extensions, different quotes
    assert ratls.extract_quote(p384_creds.cert_der) == checked.quote
    assert ratls.extract_quote(p384_creds.cert_pem) == checked.quote
    plain = _forge(ec.generate_private_key(ec.SECP384R1()))
    with pytest.raises(MissingEvidence):
        ratls.extract_quote(plain.public_bytes(serialization.Encoding.DER))
    with pytest.raises(MalformedCertificate):
        ratls.extract_quote(b"not a certificate")


# -- forged certificates for the negative cases ---------------------------------------------------


def _forge(
    key: Any, extensions: list[tuple[x509.ObjectIdentifier, bytes]] | None = None, critical: bool = False
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RATLS")])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(1).not_valid_before(ratls.DEFAULT_NOT_BEFORE).not_valid_after(ratls.DEFAULT_NOT_AFTER)
    )  # fmt: skip
    for oid, value in extensions or []:
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=critical)
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _quote(provider: SimProvider, digest_input: bytes, *, tail: bytes = bytes(32)) -> bytes:
    return provider.get_quote(hashlib.sha256(digest_input).digest() + tail)


def _claims(spki: bytes, *, alg: int = 1, digest: bytes | None = None, extra: dict | None = None) -> bytes:
    entry = cbor2.dumps([alg, digest if digest is not None else hashlib.sha256(spki).digest()])
    claims: dict[str, Any] = {"pubkey-hash": entry}
    claims.update(extra or {})
    return cbor2.dumps(claims)


def _dice_value(provider: SimProvider, claims: bytes, *, tag: int = 60000) -> bytes:
    return cbor2.dumps(cbor2.CBORTag(tag, [_quote(provider, claims), claims]))


def test_forged_valid_certificates_pass(provider) -> None:
    # the forging helpers are right: correctly bound evidence verifies
    key = ec.generate_private_key(ec.SECP384R1())
    spki = spki_of(key)
    legacy = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki))])
    assert ratls.verify_certificate(_der(legacy)).scheme == "legacy"
    dice = _dice_value(provider, _claims(spki))
    assert ratls.verify_certificate(_der(_forge(key, [(ratls.DICE_EVIDENCE_OID, dice)]))).scheme == "dice"
    for alg, name in ((7, "sha384"), (8, "sha512")):
        claims = _claims(spki, alg=alg, digest=hashlib.new(name, spki).digest())
        cert = _forge(key, [(ratls.DICE_EVIDENCE_OID, _dice_value(provider, claims))])
        assert ratls.verify_certificate(_der(cert)).scheme == "dice"
    # unknown extra claims are ignored
    claims = _claims(spki, extra={"nonce": b"\x01\x02"})
    cert = _forge(key, [(ratls.DICE_EVIDENCE_OID, _dice_value(provider, claims))])
    assert ratls.verify_certificate(_der(cert)).claims["nonce"] == b"\x01\x02"  # type: ignore[index]


def test_intended_oid_accepted(provider) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    cert = _forge(key, [(ratls.LEGACY_QUOTE_OID_INTENDED, _quote(provider, spki_of(key)))])
    assert INTENDED_OID_DER + b"\x04\x82" in _der(cert) and LEGACY_OID_DER not in _der(cert)
    assert ratls.verify_certificate(_der(cert)).scheme == "legacy"
    both = _forge(key, [(ratls.LEGACY_QUOTE_OID_INTENDED, _quote(provider, spki_of(key))),
                        (ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(key)))])  # fmt: skip
    with pytest.raises(MalformedCertificate, match="two legacy"):
        ratls.verify_certificate(_der(both))


def test_legacy_quote_not_bound_to_key(provider) -> None:
    key, other = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    cert = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(other)))])
    with pytest.raises(KeyBindingMismatch, match="legacy"):
        ratls.verify_certificate(_der(cert))
    cert = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(key), tail=b"\x01" * 32))])
    with pytest.raises(KeyBindingMismatch):
        ratls.verify_certificate(_der(cert))


def test_dice_claims_for_another_key(provider) -> None:
    key, other = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    dice = _dice_value(provider, _claims(spki_of(other)))  # quote binds these claims, but they name `other`
    with pytest.raises(KeyBindingMismatch, match="pubkey-hash"):
        ratls.verify_certificate(_der(_forge(key, [(ratls.DICE_EVIDENCE_OID, dice)])))


def test_dice_claims_tampered_after_quoting(provider) -> None:
    key, other = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    quote = _quote(provider, _claims(spki_of(other)))
    dice = cbor2.dumps(cbor2.CBORTag(60000, [quote, _claims(spki_of(key))]))
    with pytest.raises(KeyBindingMismatch, match="SHA-256 of the claims"):
        ratls.verify_certificate(_der(_forge(key, [(ratls.DICE_EVIDENCE_OID, dice)])))


def test_dice_failure_does_not_fall_back_to_legacy(provider) -> None:
    key, other = ec.generate_private_key(ec.SECP384R1()), ec.generate_private_key(ec.SECP384R1())
    good_legacy = _quote(provider, spki_of(key))
    bad_dice = _dice_value(provider, _claims(spki_of(other)))
    cert = _forge(key, [(ratls.LEGACY_QUOTE_OID, good_legacy), (ratls.DICE_EVIDENCE_OID, bad_dice)])
    with pytest.raises(KeyBindingMismatch):
        ratls.verify_certificate(_der(cert))


def test_missing_pubkey_hash(provider) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    claims = cbor2.dumps({"nonce": b"\x00" * 8})
    cert = _der(_forge(key, [(ratls.DICE_EVIDENCE_OID, _dice_value(provider, claims))]))
    with pytest.raises(MissingPubkeyHash, match="pubkey-hash"):
        ratls.verify_certificate(cert)
    assert ratls.verify_certificate(cert, require_pubkey_hash=False).scheme == "dice"


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60001, [_quote(p, c), c])), "tag 60001"),
        (lambda p, c: cbor2.dumps([_quote(p, c), c]), "tag"),
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60000, [_quote(p, c), c, b""])), "2 items"),
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60000, [_quote(p, c), c])) + b"\x00", "trailing"),
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60000, [_quote(p, c), b""])), "empty claims"),
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60000, [_quote(p, c)[:400], c])), "shorter"),
        (lambda p, c: cbor2.dumps(cbor2.CBORTag(60000, [_quote(p, c), c.decode("latin-1")])), "byte string"),
        # indefinite-length (chunked) quote byte string: 5f <chunks> ff
        (
            lambda p, c: bytes.fromhex("d9ea60825f") + cbor2.dumps(_quote(p, c)) + b"\xff" + cbor2.dumps(c),
            "indefinite",
        ),
    ],
)
def test_malformed_dice_evidence(provider, mutate, match) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    value = mutate(provider, _claims(spki_of(key)))
    with pytest.raises(MalformedEvidence, match=match):
        ratls.verify_certificate(_der(_forge(key, [(ratls.DICE_EVIDENCE_OID, value)])))


@pytest.mark.parametrize(
    ("claims_fn", "match"),
    [
        (lambda s: _claims(s, alg=2), "1, 7 or 8"),
        (lambda s: _claims(s, digest=hashlib.sha256(s).digest()[:20]), "digest"),
        (lambda s: cbor2.dumps({"pubkey-hash": b"\x01" + hashlib.sha256(s).digest()}), "2-element array"),
        (lambda s: cbor2.dumps({"pubkey-hash": "text"}), "not a byte string"),
        (
            lambda s: cbor2.dumps({"": b"x", "pubkey-hash": cbor2.dumps([1, hashlib.sha256(s).digest()])}),
            "non-empty text",
        ),
        (lambda s: cbor2.dumps([1, 2]), "not a CBOR map"),
        (lambda s: cbor2.dumps({}), "empty map"),
    ],
)
def test_malformed_claims(provider, claims_fn, match) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    value = _dice_value(provider, claims_fn(spki_of(key)))
    with pytest.raises(MalformedEvidence, match=match):
        ratls.verify_certificate(_der(_forge(key, [(ratls.DICE_EVIDENCE_OID, value)])))


@pytest.mark.parametrize(
    ("make_key", "match"),
    [
        (lambda: ec.generate_private_key(ec.SECP521R1()), "secp521r1"),
        (lambda: ec.generate_private_key(ec.SECP256K1()), "secp256k1"),
        (lambda: rsa.generate_private_key(65537, 2048), "RSA-2048"),
        (lambda: ed25519.Ed25519PrivateKey.generate(), "Ed25519"),
    ],
)
def test_wrong_key_type(provider, make_key, match) -> None:
    key = make_key()
    cert = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(key)))])
    with pytest.raises(UnsupportedKeyType, match=match):
        ratls.verify_certificate(_der(cert))


def test_other_certificate_problems(provider) -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(MissingEvidence):
        ratls.verify_certificate(_der(_forge(key)))
    critical = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(key)))], critical=True)
    with pytest.raises(MalformedCertificate, match="critical"):
        ratls.verify_certificate(_der(critical))
    small = _forge(key, [(ratls.LEGACY_QUOTE_OID, b"\x03\x00" + bytes(200))])
    with pytest.raises(MalformedEvidence, match="256..8192"):
        ratls.verify_certificate(_der(small))
    big = _forge(key, [(ratls.LEGACY_QUOTE_OID, _quote(provider, spki_of(key)) + bytes(8000))])
    with pytest.raises(MalformedEvidence, match="256..8192"):
        ratls.verify_certificate(_der(big))
    with pytest.raises(MalformedCertificate):
        ratls.verify_certificate(b"\x30\x03\x02\x01\x01")
    with pytest.raises(TypeError):
        ratls.verify_certificate("PEM?")  # type: ignore[arg-type]


def test_make_certificate_refuses_odd_quotes() -> None:
    class Tiny:
        kind = "sim"

        def get_quote(self, report_data: bytes) -> bytes:
            return b"\x03\x00" + bytes(100)

    with pytest.raises(MalformedEvidence, match="legacy quote extension"):
        ratls.make_certificate(Tiny())


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=2048))
def test_garbage_certificates_raise_only_our_errors(data: bytes) -> None:
    with pytest.raises(RaTlsError):
        ratls.verify_certificate(data)


_GARBAGE_KEY = ec.generate_private_key(ec.SECP256R1())


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=256, max_size=1200),
    st.sampled_from([b"", bytes.fromhex("d9ea6082"), bytes.fromhex("d9ea608259")]),
)
def test_garbage_dice_values_raise_only_our_errors(data: bytes, prefix: bytes) -> None:
    cert = _forge(_GARBAGE_KEY, [(ratls.DICE_EVIDENCE_OID, prefix + data)])
    with pytest.raises(RaTlsError):
        ratls.verify_certificate(_der(cert))


def test_error_tree_and_exports() -> None:
    for cls in (
        KeyBindingMismatch, MalformedCertificate, MalformedEvidence, MissingEvidence, UnsupportedKeyType
    ):
        assert issubclass(cls, RaTlsError) and issubclass(cls, TeeserveError)
    assert issubclass(MissingPubkeyHash, MalformedEvidence)
    public = {n for n in dir(ratls) if not n.startswith("_")} - {"annotations"}
    assert set(ratls.__all__) == public
