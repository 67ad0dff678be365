"""The operator's command line and its webhook certificates (no cluster)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import pytest
from agent_operator.certs import NEXT_CERT_KEY, SecretCerts, ServingCert, issue, renewal_due
from agent_operator.inject import url_host
from agent_operator.metrics import Metrics
from agent_operator.options import parse
from cryptography import x509
from cryptography.exceptions import InvalidSignature

DAY = datetime.timedelta(days=1)
HOSTS = ["ar-webhook.ar-system.svc", "ar-webhook.ar-system.svc.example.org", "fd00::5"]


def sans(cert: ServingCert) -> list[object]:
    parsed = x509.load_pem_x509_certificate(cert.cert)
    return list(parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_a_new_certificate_is_for_every_host_and_chains_to_its_bundle() -> None:
    cert = issue(HOSTS, 90 * DAY)
    assert x509.DNSName("ar-webhook.ar-system.svc.example.org") in sans(cert)
    assert x509.IPAddress(ipaddress.ip_address("fd00::5")) in sans(cert)
    ca = x509.load_pem_x509_certificates(cert.ca_bundle)[0]
    x509.load_pem_x509_certificate(cert.cert).verify_directly_issued_by(ca)
    assert not renewal_due(cert, HOSTS)
    assert "key=" not in repr(cert) and "PRIVATE" not in repr(cert)


def test_renewal_is_due_with_a_third_of_the_lifetime_left_or_other_hosts() -> None:
    now = datetime.datetime.now(datetime.UTC)
    cert = issue(HOSTS, 90 * DAY, now=now)
    assert not renewal_due(cert, HOSTS, now + 59 * DAY)
    assert renewal_due(cert, HOSTS, now + 61 * DAY)
    assert renewal_due(cert, HOSTS[:1], now)  # the cluster domain or the Service changed
    # The few minutes it is valid before it was issued do not count: a 45 s certificate
    # is not due at once.
    assert not renewal_due(issue(HOSTS, datetime.timedelta(seconds=45)), HOSTS)


def test_a_renewed_bundle_keeps_the_previous_ca_while_it_is_valid() -> None:
    now = datetime.datetime.now(datetime.UTC)
    old = issue(HOSTS, 90 * DAY, now=now)
    new = issue(HOSTS, 90 * DAY, previous=old, now=now + 61 * DAY)
    cas = x509.load_pem_x509_certificates(new.ca_bundle)
    assert len(cas) == 2
    # Replicas still serving the old certificate stay trusted; the new one is too.
    x509.load_pem_x509_certificate(old.cert).verify_directly_issued_by(cas[1])
    x509.load_pem_x509_certificate(new.cert).verify_directly_issued_by(cas[0])
    expired = issue(HOSTS, 90 * DAY, previous=old, now=now + 91 * DAY)
    assert len(x509.load_pem_x509_certificates(expired.ca_bundle)) == 1


def _certs(propagation: datetime.timedelta = datetime.timedelta(minutes=5)) -> SecretCerts:
    async def publish(_: bytes) -> None:
        raise AssertionError("plan() publishes nothing")
    return SecretCerts("ns", "tls", HOSTS, 90 * DAY, publish, Metrics(), propagation)


def _written(write: dict[str, str | None]) -> dict[str, str]:
    """The Secret's data after the write (None removes a key)."""
    return {k: v for k, v in write.items() if v is not None}


def _issuer(cert: ServingCert, bundle: bytes) -> int:
    """Which CA of `bundle` (its index) signed `cert`'s certificate."""
    served = x509.load_pem_x509_certificate(cert.cert)
    for i, ca in enumerate(x509.load_pem_x509_certificates(bundle)):
        try:
            served.verify_directly_issued_by(ca)
        except (ValueError, InvalidSignature):  # another name, or another key
            continue
        return i
    raise AssertionError("signed by no CA of the bundle")


def test_a_renewal_publishes_the_next_ca_and_serves_its_certificate_only_later() -> None:
    """What was tried: a certificate due for renewal, then the checks of any replica
    (plan() on the Secret's data as it was left) before and after the propagation time."""
    certs = _certs()
    now = datetime.datetime.now(datetime.UTC)
    first = certs.plan({}, now)
    assert first is not None and first.issued  # the first is served at once
    data = _written(first.write)
    assert certs.plan(data, now + 59 * DAY) is None  # not due yet

    due = now + 61 * DAY
    renewal = certs.plan(data, due)
    assert renewal is not None and renewal.issued
    # The bundle trusts the next CA at once, but the served certificate is still the old one.
    assert renewal.serve.cert == first.serve.cert
    assert len(x509.load_pem_x509_certificates(renewal.serve.ca_bundle)) == 2
    assert _issuer(renewal.serve, renewal.serve.ca_bundle) == 1
    waiting = _written(renewal.write)
    assert waiting[NEXT_CERT_KEY] and "PRIVATE" not in repr(renewal)

    # Any replica, until the propagation time: the same certificate, nothing to write.
    assert certs.plan(waiting, due + datetime.timedelta(minutes=4)) is None
    switched = certs.plan(waiting, due + datetime.timedelta(minutes=5))
    assert switched is not None and not switched.issued
    assert switched.serve.cert == waiting[NEXT_CERT_KEY].encode()
    assert switched.serve.ca_bundle == renewal.serve.ca_bundle  # the old CA stays trusted
    assert _issuer(switched.serve, switched.serve.ca_bundle) == 0
    after = _written(switched.write)
    assert NEXT_CERT_KEY not in after and switched.write[NEXT_CERT_KEY] is None
    assert certs.plan(after, due + datetime.timedelta(minutes=6)) is None


def test_the_wait_never_outlasts_the_served_certificate() -> None:
    """What was tried: a propagation time longer than the served certificate has left
    (halfway to its expiry instead), and a served certificate already expired (the
    renewed one at once: no one can be trusting it)."""
    certs = _certs(propagation=365 * DAY)
    now = datetime.datetime.now(datetime.UTC)
    first = certs.plan({}, now)
    assert first is not None
    data = _written(first.write)
    due = now + 80 * DAY  # 10 days left
    renewal = certs.plan(data, due)
    assert renewal is not None and renewal.serve.cert == first.serve.cert
    waiting = _written(renewal.write)
    assert certs.plan(waiting, due + 4 * DAY) is None
    switched = certs.plan(waiting, due + 5 * DAY)
    assert switched is not None and switched.serve.cert == waiting[NEXT_CERT_KEY].encode()

    late = certs.plan(data, now + 91 * DAY)
    assert late is not None and late.issued and late.serve.cert != first.serve.cert
    assert late.write[NEXT_CERT_KEY] is None
    assert len(x509.load_pem_x509_certificates(late.serve.ca_bundle)) == 1


def test_a_certificate_for_other_hosts_is_replaced_at_once_keeping_the_served_ones_ca() -> None:
    """What was tried: the Service's hosts changed while a renewal waited. The served
    certificate names the old hosts, so no client of the new ones verifies it: the
    renewal for the new hosts is served at once, not after the wait, and the bundle keeps
    the CA of the certificate served until then (not the dropped waiting one's)."""
    certs = _certs()
    now = datetime.datetime.now(datetime.UTC)
    first = certs.plan({}, now)
    assert first is not None
    renewal = certs.plan(_written(first.write), now + 61 * DAY)
    assert renewal is not None
    moved = SecretCerts("ns", "tls", HOSTS[:1], 90 * DAY, certs.publish, Metrics())
    again = moved.plan(_written(renewal.write), now + 61 * DAY)
    assert again is not None and again.issued
    assert again.serve.cert not in (first.serve.cert, _written(renewal.write)[NEXT_CERT_KEY])
    assert sans(again.serve) == [x509.DNSName(HOSTS[0])]
    assert again.write[NEXT_CERT_KEY] is None
    assert _issuer(again.serve, again.serve.ca_bundle) == 0
    assert _issuer(first.serve, again.serve.ca_bundle) == 1


def test_ipv6_addresses_are_bracketed_in_urls() -> None:
    assert url_host("fd00:10:244::5") == "[fd00:10:244::5]"
    assert url_host("10.244.0.5") == "10.244.0.5"


def test_options_from_the_environment_the_chart_sets() -> None:
    o = parse(["--all-namespaces"], env={
        "AGENT_OPERATOR_LEASE": "ar-system/ar", "AGENT_OPERATOR_PEERING_LIFETIME": "12",
        "AGENT_OPERATOR_WEBHOOK_CERT_SECRET": "ar-system/ar-webhook-tls",
        "AGENT_OPERATOR_WEBHOOK_HOSTS": "a.ar-system.svc, a.ar-system.svc.example.org",
        "AGENT_OPERATOR_WEBHOOK_ADDR": "", "AGENT_OPERATOR_METRICS_PORT": "8081",
        "AGENT_SIDECAR_IMAGE_PULL_SECRETS": "regcred, mirror",
        "AGENT_OPERATOR_WEBHOOK_CA_PROPAGATION_SECONDS": "600"})
    assert o.lease == ("ar-system", "ar") and o.lease_seconds == 12
    assert o.webhook_ca_propagation == datetime.timedelta(minutes=10)
    assert o.webhook_cert_secret == ("ar-system", "ar-webhook-tls")
    assert o.webhook_hosts == ["a.ar-system.svc", "a.ar-system.svc.example.org"]
    assert o.webhook_addr is None  # every address, both families
    assert o.metrics_port == 8081
    assert o.sidecar.image_pull_secrets == ("regcred", "mirror")
    assert parse(["--no-webhook", "--webhook-addr", "[::1]"], env={}).webhook_addr == "::1"
    assert parse(["--no-webhook"], env={}).webhook_ca_propagation == datetime.timedelta(minutes=5)


@pytest.mark.parametrize(("args", "message"), [
    (["--lease", "no-namespace"], "expected <namespace>/<name>"),
    (["--webhook-cert-secret", "a/b/c"], "expected <namespace>/<name>"),
    ([], "the webhook needs --webhook-cert-secret"),
    (["--webhook-cert-dir", "/x", "--webhook-cert-secret", "a/b"], "not allowed with"),
])
def test_bad_options_are_refused_at_start(args: list[str], message: str) -> None:
    """Tried: a Lease without a namespace, a Secret with two slashes, a webhook with no
    certificate source, two certificate sources."""
    run = subprocess.run([sys.executable, "-m", "agent_operator", *args], capture_output=True,
                         text=True, timeout=60, env={"PATH": "/usr/bin"})
    assert run.returncode == 2
    assert message in run.stderr
