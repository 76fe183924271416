"""Certificates and keys for the local control plane.

One self-signed CA signs every serving and client certificate; a separate RSA key signs
service-account tokens. Everything is generated once per state directory and reused by
later ``up`` calls, so kubeconfigs handed out earlier stay valid.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# The first address of --service-cluster-ip-range: the ClusterIP of the kubernetes Service.
SERVICE_IP = "10.0.0.1"
API_SERVER_SANS_DNS = [
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
]
API_SERVER_SANS_IP = ["127.0.0.1", SERVICE_IP]

_VALIDITY = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class Pki:
    """Paths of every PEM file the control plane uses."""

    dir: Path

    def path(self, name: str) -> Path:
        """Path of one PEM file in the PKI directory."""
        return self.dir / name

    @property
    def ca_crt(self) -> Path:
        return self.path("ca.crt")

    @property
    def ca_key(self) -> Path:
        return self.path("ca.key")

    @property
    def sa_key(self) -> Path:
        return self.path("sa.key")

    @property
    def sa_pub(self) -> Path:
        return self.path("sa.pub")


def _new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _write_key(key: rsa.RSAPrivateKey, path: Path) -> None:
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_cert(cert: x509.Certificate, path: Path) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _load_key(path: Path) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def _name(cn: str, org: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, cn)]
    if org:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    return x509.Name(attrs)


def _make_ca(pki: Pki) -> None:
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name("localcluster-ca")
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_key(key, pki.ca_key)
    _write_cert(cert, pki.ca_crt)


def _issue(
    pki: Pki,
    stem: str,
    cn: str,
    *,
    org: str | None = None,
    server: bool = False,
    client: bool = False,
    dns: list[str] | None = None,
    ips: list[str] | None = None,
) -> None:
    """Issue ``<stem>.crt``/``<stem>.key`` signed by the CA."""
    ca_key = _load_key(pki.ca_key)
    ca_cert = x509.load_pem_x509_certificate(pki.ca_crt.read_bytes())
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn, org))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    sans: list[x509.GeneralName] = [x509.DNSName(d) for d in dns or []]
    sans += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips or []]
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_key(key, pki.path(f"{stem}.key"))
    _write_cert(cert, pki.path(f"{stem}.crt"))


# (stem, common name, organisation, server, client, with API server SANs)
_LEAVES: list[tuple[str, str, str | None, bool, bool, bool]] = [
    ("etcd-server", "etcd", None, True, True, False),
    ("apiserver-etcd-client", "kube-apiserver-etcd-client", None, False, True, False),
    ("apiserver", "kube-apiserver", None, True, False, True),
    ("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters", False, True, False),
    ("front-proxy-client", "front-proxy-client", None, False, True, False),
    ("admin", "localcluster-admin", "system:masters", False, True, False),
    ("kubelet", "localcluster-kubelet", None, True, False, False),
    ("controller-manager", "system:kube-controller-manager", None, False, True, False),
    ("scheduler", "system:kube-scheduler", None, False, True, False),
]


def ensure_pki(directory: Path) -> Pki:
    """Create the CA, leaf certificates and service-account key pair if missing."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    if not pki.ca_crt.exists() or not pki.ca_key.exists():
        _make_ca(pki)
    for stem, cn, org, server, client, apiserver_sans in _LEAVES:
        if pki.path(f"{stem}.crt").exists() and pki.path(f"{stem}.key").exists():
            continue
        _issue(
            pki,
            stem,
            cn,
            org=org,
            server=server,
            client=client,
            dns=API_SERVER_SANS_DNS if apiserver_sans else (["localhost"] if server else None),
            ips=API_SERVER_SANS_IP if apiserver_sans else (["127.0.0.1"] if server else None),
        )
    if not pki.sa_key.exists() or not pki.sa_pub.exists():
        key = _new_key()
        _write_key(key, pki.sa_key)
        pki.sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
    return pki
