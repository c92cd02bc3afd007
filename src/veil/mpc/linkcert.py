"""The party's link certificate: mutual TLS on the SPU links between the parties of a session.

Each party has a long-lived self-signed certificate and key (ECDSA P-256, made with the
`cryptography` package on first start, the key written 0600). The party states the certificate
in its `hello` reply; over a node's route that reply travels inside OHTTP sealed to the node's
verified key, so the client learns it authentically. At `open` the client gives each party all
three certificates of the session; a party builds its SPU link with mutual TLS whose trust
anchors are exactly the other two parties' certificates, so it links only with the peers the
client chose, and nobody on the path between parties sees shares or can join the link.

Nothing here implements cryptography: certificates are made and parsed by `cryptography`,
and TLS itself is brpc's (OpenSSL) inside SPU's link.
"""

from __future__ import annotations

import datetime
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from veil.mpc.errors import MpcConfigError, ProtocolViolation

__all__ = [
    "CERT_FILE",
    "KEY_FILE",
    "MAX_CERT_PEM",
    "LinkIdentity",
    "cert_subject",
    "check_cert_pem",
]

log = logging.getLogger(__name__)

CERT_FILE = "link-cert.pem"
KEY_FILE = "link-key.pem"
MAX_CERT_PEM = 8 * 1024  # bytes; a P-256 self-signed certificate is about 600
VALIDITY_DAYS = 3650  # long-lived: the certificate is pinned per session by the client
_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True)
class LinkIdentity:
    """A party's link certificate and key, as files SPU's link reads."""

    cert_path: Path
    key_path: Path
    cert_pem: str  # what the party states in `hello`

    @property
    def fingerprint(self) -> str:
        """SHA-256 of the certificate (DER), hex: a short name for logs and operators."""
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        cert = x509.load_pem_x509_certificate(self.cert_pem.encode())
        return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()

    @classmethod
    def load_or_create(cls, directory: Path) -> LinkIdentity:
        """Load `directory`/link-cert.pem and link-key.pem, or create both (key 0600).

        Raises `MpcConfigError` when the key is readable by other users or the files are
        not a certificate and its key.
        """
        directory = Path(directory)
        cert_path, key_path = directory / CERT_FILE, directory / KEY_FILE
        if key_path.exists() or cert_path.exists():
            return cls._load(cert_path, key_path)
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key_pem, cert_pem = _make()
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem, 0o644)
        identity = cls(cert_path, key_path, cert_pem.decode())
        log.info("created the MPC link certificate %s in %s", identity.fingerprint[:16], directory)
        return identity

    @classmethod
    def _load(cls, cert_path: Path, key_path: Path) -> LinkIdentity:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        try:
            if key_path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise MpcConfigError(f"{key_path} is accessible to other users; chmod 600 it")
            key = load_pem_private_key(key_path.read_bytes(), password=None)
            cert_pem = check_cert_pem(cert_path.read_text())
        except OSError as exc:
            raise MpcConfigError(f"cannot read the MPC link certificate or key: {exc}") from exc
        except (ValueError, TypeError, ProtocolViolation) as exc:
            raise MpcConfigError(f"bad MPC link certificate or key in {key_path.parent}") from exc
        from cryptography import x509

        if x509.load_pem_x509_certificate(cert_pem.encode()).public_key() != key.public_key():
            raise MpcConfigError(f"{cert_path} does not belong to the key {key_path}")
        return cls(cert_path, key_path, cert_pem)


def _make() -> tuple[bytes, bytes]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    # a name of its own: OpenSSL finds a trust anchor by subject name, so two peers' certs
    # with one name would make one of them fail verification
    name = f"veil-mpc-party-{secrets.token_hex(8)}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALIDITY_DAYS))
        # an end entity, not a CA: it can vouch for nothing but itself
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def cert_subject(pem: str) -> str:
    """The subject name of a certificate `check_cert_pem` accepted (RFC 4514 string)."""
    from cryptography import x509

    return x509.load_pem_x509_certificate(pem.encode()).subject.rfc4514_string()


def check_cert_pem(pem: Any) -> str:
    """`pem` if it is exactly one PEM X.509 certificate of sane size; else ProtocolViolation."""
    from cryptography import x509

    if not isinstance(pem, str) or not 0 < len(pem) <= MAX_CERT_PEM or pem.count(_BEGIN) != 1:
        raise ProtocolViolation("a link certificate must be one PEM certificate")
    try:
        x509.load_pem_x509_certificate(pem.encode())
    except ValueError as exc:
        raise ProtocolViolation("a link certificate does not parse") from exc
    return pem
