"""Is the quote's PCK certificate chain Intel's? Checked before any collateral is fetched.

Why: the collateral to fetch is picked by the FMSPC in the quote's PCK certificate, which nothing has
verified yet (dcap-qvl checks the chain later, with the collateral). A client could otherwise make up
an FMSPC per connection and have the broker ask its PCCS for each. This check needs no network: the
chain in the quote must end at the Intel SGX Root CA's public key (pinned below; Intel has reissued
the root certificate with the same key, so the key is pinned, not a certificate), each certificate
signed by the next. Revocation and validity stay dcap-qvl's to check, with the CRLs of the collateral.
"""

from __future__ import annotations

import functools

from ._errors import QuoteVerificationFailed

__all__ = ["INTEL_SGX_ROOT_CA_PUBLIC_KEY", "check_pck_chain"]

#: SubjectPublicKeyInfo (DER) of the Intel SGX Root CA (P-256), as in Intel's root certificates.
INTEL_SGX_ROOT_CA_PUBLIC_KEY = bytes.fromhex(
    "3059301306072a8648ce3d020106082a8648ce3d030107034200040ba9c4c0c0c86193a3fe23d6b02cda10a8bbd4e88e48"
    "b4458561a36e705525f567918e2edc88e40d860bd0cc4ee26aacc988e505a953558c453f6b0904ae7394"
)


def check_pck_chain(chain_pem: bytes, root_public_key: bytes = INTEL_SGX_ROOT_CA_PUBLIC_KEY) -> None:
    """Raise :class:`QuoteVerificationFailed` unless ``chain_pem`` (leaf, CA, root) is signed link by
    link up to ``root_public_key``. Cached per chain: a platform's quotes all carry the same one."""
    problem = _problem(bytes(chain_pem), root_public_key)
    if problem:
        raise QuoteVerificationFailed(f"PCK certificate chain: {problem}")


@functools.lru_cache(maxsize=256)
def _problem(chain_pem: bytes, root_public_key: bytes) -> str:
    from cryptography import x509
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import serialization

    from ._quote import _PEM_CERT

    try:  # each PEM block on its own (quotes carry NUL padding and line endings of all kinds)
        certs = [x509.load_pem_x509_certificate(block) for block in _PEM_CERT.findall(chain_pem)]
    except ValueError:
        return "not readable PEM certificates"
    if not certs:
        return "no PEM certificates (certification data type 5 holds a PEM chain)"
    if len(certs) < 2:
        return f"{len(certs)} certificate(s), expected the PCK leaf, its CA and the root"
    root = certs[-1]
    key = root.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    if key != root_public_key:
        return "does not end at the Intel SGX Root CA"
    for cert, issuer in zip(certs, certs[1:], strict=False):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            return f"{cert.subject.rfc4514_string()} is not signed by {issuer.subject.rfc4514_string()}"
    return ""
