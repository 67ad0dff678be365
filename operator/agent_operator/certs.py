"""The webhook's certificate: a CA and a serving certificate, kept in one Secret that every
replica serves from, and renewed well before it expires.

Renewal makes a new CA and a new serving certificate at once. The CA bundle the apiserver
trusts then holds the new CA and the previous one (while it is valid), so a replica still
serving the previous certificate stays trusted until it reloads. The bundle is published
(the webhook configuration's caBundle) before the Secret changes: no replica can serve a
certificate the apiserver does not trust yet. Replicas race through the Secret's
resourceVersion: whoever writes first wins, the others read what it wrote.

cert-manager, or any Secret kept by someone else, can supply the same three files instead
(`FileCerts`); the operator then only reloads them.
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent_operator import kube
from agent_operator.metrics import Metrics

CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"  # kubernetes.io/tls, plus the CA
RENEW_FRACTION = 3  # renew when less than a third of the lifetime is left
# Valid from a little before it is issued: an apiserver whose clock is behind still
# accepts it. Not part of the lifetime renewal counts with.
BACKDATE = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class ServingCert:
    ca_bundle: bytes  # PEM, one or more CA certificates: the webhook's caBundle
    cert: bytes  # PEM
    key: bytes = field(repr=False)  # PEM

    @property
    def not_after(self) -> datetime.datetime:
        return x509.load_pem_x509_certificate(self.cert).not_valid_after_utc

    def as_data(self) -> dict[str, str]:
        return {CA_KEY: self.ca_bundle.decode(), CERT_KEY: self.cert.decode(),
                KEY_KEY: self.key.decode()}

    @classmethod
    def from_data(cls, data: dict[str, str]) -> ServingCert | None:
        if not all(data.get(k) for k in (CA_KEY, CERT_KEY, KEY_KEY)):
            return None
        return cls(data[CA_KEY].encode(), data[CERT_KEY].encode(), data[KEY_KEY].encode())


class CertSource(Protocol):
    async def current(self) -> ServingCert: ...


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def issue(hosts: list[str], validity: datetime.timedelta, previous: ServingCert | None = None,
          now: datetime.datetime | None = None) -> ServingCert:
    """A new CA and a serving certificate for `hosts` (DNS names or IPs, v4 or v6); the
    bundle keeps the previous CA while it is valid."""
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - BACKDATE, now + validity
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("agent-operator webhook CA"))
        .issuer_name(_name("agent-operator webhook CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = _pem(ca)
    if previous is not None:
        old = x509.load_pem_x509_certificates(previous.ca_bundle)[0]
        if old.not_valid_after_utc > now:
            bundle += _pem(old)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ServingCert(bundle, _pem(cert), key_pem)


def renewal_due(cert: ServingCert, hosts: list[str],
                now: datetime.datetime | None = None) -> bool:
    """Due when a third of the lifetime is left, or the certificate names other hosts
    (the Service or the cluster domain changed)."""
    now = now or datetime.datetime.now(datetime.UTC)
    parsed = x509.load_pem_x509_certificate(cert.cert)
    try:
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    if set(sans) != {_san(h) for h in hosts}:
        return True
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc - BACKDATE
    return parsed.not_valid_after_utc - now < lifetime / RENEW_FRACTION


class SecretCerts:
    """The certificate in a Secret of the operator's namespace, issued and renewed by
    whichever replica finds it missing or due; `publish` gets the new CA bundle first."""

    def __init__(self, namespace: str, name: str, hosts: list[str],
                 validity: datetime.timedelta, publish: Callable[[bytes], Awaitable[None]],
                 metrics: Metrics) -> None:
        self.namespace, self.name, self.hosts = namespace, name, hosts
        self.validity, self.publish, self.metrics = validity, publish, metrics

    async def current(self) -> ServingCert:
        for _ in range(5):
            found = await kube.read_secret_versioned(self.namespace, self.name)
            served = ServingCert.from_data(found.data) if found else None
            if served is not None and not renewal_due(served, self.hosts):
                return served
            new = issue(self.hosts, self.validity, served)
            await self.publish(new.ca_bundle)
            try:
                await kube.write_secret(self.namespace, self.name, new.as_data(),
                                        found.resource_version if found else None)
            except kube.Conflict:
                continue  # another replica wrote first: serve what it wrote
            self.metrics.certificate_renewals.inc()
            return new
        raise RuntimeError(f"the webhook certificate Secret {self.namespace}/{self.name} "
                           "kept changing while it was being renewed")


class FileCerts:
    """ca.crt, tls.crt and tls.key in a directory (a mounted Secret that cert-manager or
    the user keeps current); re-read on every check."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def current(self) -> ServingCert:
        def read() -> ServingCert:
            return ServingCert(*((self.directory / k).read_bytes()
                                 for k in (CA_KEY, CERT_KEY, KEY_KEY)))
        return await asyncio.to_thread(read)
