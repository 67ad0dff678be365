"""The webhook's certificate: a CA and a serving certificate, kept in one Secret that every
replica serves from, and renewed well before it expires.

Renewal publishes before it serves, as trust distribution must (cert-manager's
trust-manager, Istio's root rotation): the next CA and the serving certificate it signed
are made at once, but first only the CA bundle changes, to the next CA and the current
one; the next certificate waits in the Secret beside the served one and replaces it only
after `propagation` (or halfway to the served certificate's expiry, if sooner), time for
the bundle to reach everyone who trusts it: the webhook configuration's caBundle, the
namespaces' ConfigMaps and, through the kubelet, the files mounted in running pods. The
bundle is published (caBundle) before the Secret changes, and keeps the previous CA
after the switch, so a replica still serving the previous certificate stays trusted
until it reloads. Replicas race through the Secret's resourceVersion: whoever writes
first wins, the others read what it wrote; the waiting certificate and its time are in
the Secret, so whichever replica checks after that time makes the switch.

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
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent_operator import kube
from agent_operator.metrics import Metrics

CA_KEY, CERT_KEY, KEY_KEY = "ca.crt", "tls.crt", "tls.key"  # kubernetes.io/tls, plus the CA
# The renewed certificate while its CA propagates, and when it is served (ISO 8601).
NEXT_CERT_KEY, NEXT_KEY_KEY, NEXT_FROM_KEY = "next.crt", "next.key", "next.from"
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


def issuer_of(cert: ServingCert) -> x509.Certificate | None:
    """The CA of `cert`'s bundle that signed its certificate (while a renewal waits, the
    bundle's first CA is the next one, not this one)."""
    served = x509.load_pem_x509_certificate(cert.cert)
    for ca in x509.load_pem_x509_certificates(cert.ca_bundle):
        try:
            served.verify_directly_issued_by(ca)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return ca
    return None


def issue(hosts: list[str], validity: datetime.timedelta, previous: ServingCert | None = None,
          now: datetime.datetime | None = None) -> ServingCert:
    """A new CA and a serving certificate for `hosts` (DNS names or IPs, v4 or v6); the
    bundle keeps the CA of the previous certificate while it is valid."""
    now = now or datetime.datetime.now(datetime.UTC)
    start, end = now - BACKDATE, now + validity
    ca_key = ec.generate_private_key(ec.SECP256R1())
    # A name of its own and key identifiers: with the previous CA beside it in a bundle,
    # OpenSSL (the sidecar's TLS) picks a certificate's issuer by name and key id, and
    # would otherwise try the wrong CA and fail the handshake.
    ca_name = _name(f"agent-operator webhook CA {now:%Y-%m-%dT%H:%M:%SZ}")
    ca_key_id = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=True, crl_sign=True,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(ca_key_id, critical=False)
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
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
            ca_key_id), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    bundle = _pem(ca)
    old = issuer_of(previous) if previous is not None else None
    if old is not None and old.not_valid_after_utc > now:
        bundle += _pem(old)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return ServingCert(bundle, _pem(cert), key_pem)


def names(cert: ServingCert, hosts: list[str]) -> bool:
    """Whether the certificate is for exactly these hosts."""
    parsed = x509.load_pem_x509_certificate(cert.cert)
    try:
        sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    return set(sans) == {_san(h) for h in hosts}


def renewal_due(cert: ServingCert, hosts: list[str],
                now: datetime.datetime | None = None) -> bool:
    """Due when a third of the lifetime is left, or the certificate names other hosts
    (the Service or the cluster domain changed)."""
    now = now or datetime.datetime.now(datetime.UTC)
    if not names(cert, hosts):
        return True
    parsed = x509.load_pem_x509_certificate(cert.cert)
    lifetime = parsed.not_valid_after_utc - parsed.not_valid_before_utc - BACKDATE
    return parsed.not_valid_after_utc - now < lifetime / RENEW_FRACTION


@dataclass(frozen=True)
class Renewal:
    """A renewed certificate waiting in the Secret until `serve_from`, its CA already in
    the bundle of the one served."""
    cert: ServingCert
    serve_from: datetime.datetime

    def as_data(self) -> dict[str, str]:
        return {NEXT_CERT_KEY: self.cert.cert.decode(), NEXT_KEY_KEY: self.cert.key.decode(),
                NEXT_FROM_KEY: self.serve_from.isoformat()}

    @classmethod
    def from_data(cls, data: dict[str, str], bundle: bytes) -> Renewal | None:
        if not all(data.get(k) for k in (NEXT_CERT_KEY, NEXT_KEY_KEY, NEXT_FROM_KEY)):
            return None
        try:
            serve_from = datetime.datetime.fromisoformat(data[NEXT_FROM_KEY])
        except ValueError:
            return None  # renewed again rather than guessed at
        if serve_from.tzinfo is None:
            return None
        return cls(ServingCert(bundle, data[NEXT_CERT_KEY].encode(),
                               data[NEXT_KEY_KEY].encode()), serve_from)


# Written with a certificate that is served now: removes a waiting one from the Secret.
NO_RENEWAL: dict[str, str | None] = dict.fromkeys((NEXT_CERT_KEY, NEXT_KEY_KEY, NEXT_FROM_KEY))


@dataclass(frozen=True)
class Step:
    serve: ServingCert  # what the replica serves (and publishes the bundle of) now
    write: dict[str, str | None] = field(repr=False)  # into the Secret; None removes a key
    issued: bool  # a new certificate (counted), not a waiting one now served


class SecretCerts:
    """The certificate in a Secret of the operator's namespace, issued and renewed by
    whichever replica finds it missing or due; `publish` gets the new CA bundle first,
    and a renewed certificate is served `propagation` after its CA was published."""

    def __init__(self, namespace: str, name: str, hosts: list[str],
                 validity: datetime.timedelta, publish: Callable[[bytes], Awaitable[None]],
                 metrics: Metrics,
                 propagation: datetime.timedelta = datetime.timedelta(minutes=5)) -> None:
        self.namespace, self.name, self.hosts = namespace, name, hosts
        self.validity, self.publish, self.metrics = validity, publish, metrics
        self.propagation = propagation

    def plan(self, data: dict[str, str], now: datetime.datetime) -> Step | None:
        """What to serve and write now, or None when the served certificate stands."""
        served = ServingCert.from_data(data)
        if served is None:  # the first: nothing trusts an older CA, serve it at once
            new = issue(self.hosts, self.validity, now=now)
            return Step(new, {**new.as_data(), **NO_RENEWAL}, issued=True)
        waiting = Renewal.from_data(data, served.ca_bundle)
        if waiting is not None and not renewal_due(waiting.cert, self.hosts, now):
            if now < waiting.serve_from:
                return None
            return Step(waiting.cert, {**waiting.cert.as_data(), **NO_RENEWAL}, issued=False)
        if waiting is None and not renewal_due(served, self.hosts, now):
            return None
        new = issue(self.hosts, self.validity, served, now=now)
        # Never past the served certificate's expiry: halfway there at the latest.
        left = max(served.not_after - now, datetime.timedelta(0))
        serve_from = now + min(self.propagation, left / 2)
        if serve_from <= now or not names(served, self.hosts):
            # Expired, or for other hosts (the Service or the cluster domain changed):
            # no client can verify the served one any more, waiting gains nothing.
            return Step(new, {**new.as_data(), **NO_RENEWAL}, issued=True)
        publishing = ServingCert(new.ca_bundle, served.cert, served.key)
        return Step(publishing, {**publishing.as_data(), **Renewal(new, serve_from).as_data()},
                    issued=True)

    async def current(self) -> ServingCert:
        for _ in range(5):
            found = await kube.read_secret_versioned(self.namespace, self.name)
            data = found.data if found else {}
            now = datetime.datetime.now(datetime.UTC)
            step = self.plan(data, now)
            if step is None:
                served = ServingCert.from_data(data)
                assert served is not None  # plan issues when there is none
                return served
            await self.publish(step.serve.ca_bundle)
            try:
                await kube.write_secret(self.namespace, self.name, step.write,
                                        found.resource_version if found else None)
            except kube.Conflict:
                continue  # another replica wrote first: serve what it wrote
            if step.issued:
                self.metrics.certificate_renewals.inc()
            return step.serve
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
