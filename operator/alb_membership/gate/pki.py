"""A CA and serving (and client) certificates signed by it, as PEM bytes: the deletion gate's TLS (gate/tls.py) and
the local cluster's PKI (localcluster/certs.py) are made the same way."""

from __future__ import annotations

import datetime as dt
import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def pem_key(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common_name: str, days: int, now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate, key) of a CA that signs leaf certificates only (path length 0)."""
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)


def make_serving(ca_cert: bytes, ca_key: bytes, hosts: list[str], days: int, now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate, key) for ``hosts`` (DNS names or IP addresses; the first is the subject), signed by the CA."""
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    builder = x509.CertificateBuilder().add_extension(x509.SubjectAlternativeName(names), critical=False)
    return _signed(builder, ca_cert, ca_key, hosts[0], ExtendedKeyUsageOID.SERVER_AUTH, days, now)


def make_client(ca_cert: bytes, ca_key: bytes, common_name: str, days: int, now: dt.datetime) -> tuple[bytes, bytes]:
    """(certificate, key) a TLS client presents (clientAuth), signed by the CA: a replica forwarding a review to
    the leader under mTLS, or the local API server calling webhooks."""
    return _signed(x509.CertificateBuilder(), ca_cert, ca_key, common_name, ExtendedKeyUsageOID.CLIENT_AUTH, days, now)


def _signed(
    builder: x509.CertificateBuilder,
    ca_cert: bytes,
    ca_key: bytes,
    common_name: str,
    usage: x509.ObjectIdentifier,
    days: int,
    now: dt.datetime,
) -> tuple[bytes, bytes]:
    ca = x509.load_pem_x509_certificate(ca_cert)
    signer = serialization.load_pem_private_key(ca_key, None)
    assert isinstance(signer, ec.EllipticCurvePrivateKey)
    key = _key()
    cert = (
        builder.subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .sign(signer, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), pem_key(key)
