"""A throw-away certificate authority for the lab and the tests (cryptography's x509 builder).

:func:`make_etcd_pki` writes, into a fresh directory, everything etcd over TLS with client
certificates needs: a CA, a server certificate for the given IP addresses (also used
between etcd peers, so it is good for both server and client authentication), and a
client certificate for lifeline. Every key is made at run time and written mode 0600;
nothing secret is committed to the repository. A second, unrelated CA
(:attr:`EtcdPki.rogue_ca`) and a client certificate it signed let tests prove that a
certificate from the wrong authority is refused.

Synchronous: used from fixtures and lab set-up code, outside any trio run.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

#: How long the lab's certificates are valid: a drill or a test run, with room to spare.
VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True)
class EtcdPki:
    """The files :func:`make_etcd_pki` wrote (PEM)."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    rogue_ca: Path
    rogue_client_cert: Path
    rogue_client_key: Path


def _name(common_name: str | None, unit: str = "etcd") -> x509.Name:
    """``O=lifeline lab, OU=unit[, CN=common_name]``."""
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "lifeline lab"),
                  x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, unit)]
    if common_name:
        attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _ca(common_name: str, now: datetime.datetime) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(common_name: str | None, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
          now: datetime.datetime, *, server: bool, addresses: Sequence[str] = ()
          ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    subject = _name(common_name, "etcd server" if server else "lifeline client")
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=True,
                                     data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if addresses:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]),
            critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_etcd_pki(directory: Path | str, addresses: Sequence[str] = ("127.0.0.1",)) -> EtcdPki:
    """A CA, a server certificate for ``addresses`` (IP SANs; server and client use, for
    etcd's client port, its peers, and its own gateway), a client certificate for
    lifeline, and a rogue CA with a client certificate of its own, in ``directory``.

    The client certificates have no common name: with ``--client-cert-auth`` and auth
    on, etcd (since 3.4.10) answers every JSON-gateway request made with a certificate
    that has one "400 CommonName of client sending a request against gateway will be
    ignored and not used as expected"; lifeline authenticates with its password. The
    server certificate's common name is no etcd user name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, ca_cert = _ca("lifeline lab etcd CA", now)
    server_key, server_cert = _leaf("lifeline-lab-etcd-server", ca_key, ca_cert, now, server=True,
                                    addresses=addresses)
    client_key, client_cert = _leaf(None, ca_key, ca_cert, now, server=False)
    rogue_key, rogue_cert = _ca("somebody else's CA", now)
    rogue_client_key, rogue_client_cert = _leaf(None, rogue_key, rogue_cert, now,
                                                server=False)
    pki = EtcdPki(ca=directory / "ca.pem", server_cert=directory / "server.pem",
                  server_key=directory / "server-key.pem", client_cert=directory / "client.pem",
                  client_key=directory / "client-key.pem", rogue_ca=directory / "rogue-ca.pem",
                  rogue_client_cert=directory / "rogue-client.pem",
                  rogue_client_key=directory / "rogue-client-key.pem")
    _write_cert(pki.ca, ca_cert)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client_cert)
    _write_key(pki.client_key, client_key)
    _write_cert(pki.rogue_ca, rogue_cert)
    _write_cert(pki.rogue_client_cert, rogue_client_cert)
    _write_key(pki.rogue_client_key, rogue_client_key)
    return pki
