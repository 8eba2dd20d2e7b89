"""The certificates and keys a local control plane needs, written into one directory.

One CA signs everything: the kube-apiserver serving certificate, the admin client
certificate (``O=system:masters``) and, on request, serving certificates for other
processes (e.g. a kube-rbac-proxy the harness wants to verify). The ServiceAccount token
signing key pair is separate (the API server signs tokens with it, not with the CA).

ECDSA P-256 keys: generated in microseconds and accepted by every component we run.
Private keys are written with mode 0600.
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

#: Hosts the API server's serving certificate must cover: loopback (how the harness and
#: the local processes reach it) and the in-cluster names and service IP (what a client
#: configured "in cluster" would ask for).
APISERVER_HOSTS: tuple[str, ...] = (
    "127.0.0.1",
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
DEFAULT_SERVICE_IP = "10.0.0.1"

_VALIDITY = datetime.timedelta(days=2)  # a control plane lives for one test run
_CLOCK_SKEW = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class CertifiedKey:
    """A certificate and its private key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class _Issuer:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class ClusterPki:
    """Every credential file of one local control plane."""

    directory: Path
    ca: CertifiedKey
    apiserver: CertifiedKey
    admin: CertifiedKey
    service_account_private_key: Path
    service_account_public_key: Path

    def issue_serving_cert(self, name: str, hosts: Sequence[str]) -> CertifiedKey:
        """A serving certificate signed by this CA for ``hosts`` (DNS names or IPs)."""
        issuer = _load_issuer(self.ca)
        return _issue(self.directory, name, issuer, common_name=name, organizations=(), hosts=hosts, server=True)

    def issue_client_cert(self, name: str, user: str, groups: Sequence[str] = ()) -> CertifiedKey:
        """A client certificate signed by this CA for ``user`` in ``groups``."""
        issuer = _load_issuer(self.ca)
        return _issue(self.directory, name, issuer, common_name=user, organizations=groups, hosts=(), server=False)


def create_cluster_pki(directory: Path, *, service_ip: str = DEFAULT_SERVICE_IP) -> ClusterPki:
    """Create a CA, the API server and admin certificates and the ServiceAccount key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = _new_key()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kserve-compat-local-ca")])
    now = _now()
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca = CertifiedKey(cert=directory / "ca.crt", key=directory / "ca.key")
    _write_cert(ca.cert, ca_cert)
    _write_key(ca.key, ca_key)
    issuer = _Issuer(ca_cert, ca_key)

    apiserver = _issue(
        directory,
        "apiserver",
        issuer,
        common_name="kube-apiserver",
        organizations=(),
        hosts=(*APISERVER_HOSTS, service_ip),
        server=True,
    )
    admin = _issue(
        directory,
        "admin",
        issuer,
        common_name="admin",
        organizations=("system:masters",),
        hosts=(),
        server=False,
    )

    sa_key = _new_key()
    sa_private = directory / "sa.key"
    sa_public = directory / "sa.pub"
    _write_key(sa_private, sa_key)
    sa_public.write_bytes(
        sa_key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return ClusterPki(
        directory=directory,
        ca=ca,
        apiserver=apiserver,
        admin=admin,
        service_account_private_key=sa_private,
        service_account_public_key=sa_public,
    )


def _issue(
    directory: Path,
    name: str,
    issuer: _Issuer,
    *,
    common_name: str,
    organizations: Sequence[str],
    hosts: Sequence[str],
    server: bool,
) -> CertifiedKey:
    key = _new_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    attributes += [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    now = _now()
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(issuer.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _CLOCK_SKEW)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(host) for host in hosts]), critical=False
        )
    certificate = builder.sign(issuer.key, hashes.SHA256())
    pair = CertifiedKey(cert=directory / f"{name}.crt", key=directory / f"{name}.key")
    _write_cert(pair.cert, certificate)
    _write_key(pair.key, key)
    return pair


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _load_issuer(ca: CertifiedKey) -> _Issuer:
    certificate = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise TypeError(f"{ca.key}: expected an ECDSA CA key")
    return _Issuer(certificate, key)


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_cert(path: Path, certificate: x509.Certificate) -> None:
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    write_private_file(path, data)


def write_private_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by the owner only (created 0600, never wider)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # an existing file keeps its old mode through O_CREAT
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
