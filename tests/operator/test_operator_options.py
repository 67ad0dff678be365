"""The operator's command line and its webhook certificates (no cluster)."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import sys

import pytest
from agent_operator.certs import ServingCert, issue, renewal_due
from agent_operator.inject import url_host
from agent_operator.options import parse
from cryptography import x509

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


def test_ipv6_addresses_are_bracketed_in_urls() -> None:
    assert url_host("fd00:10:244::5") == "[fd00:10:244::5]"
    assert url_host("10.244.0.5") == "10.244.0.5"


def test_options_from_the_environment_the_chart_sets() -> None:
    o = parse(["--all-namespaces"], env={
        "AGENT_OPERATOR_LEASE": "ar-system/ar", "AGENT_OPERATOR_PEERING_LIFETIME": "12",
        "AGENT_OPERATOR_WEBHOOK_CERT_SECRET": "ar-system/ar-webhook-tls",
        "AGENT_OPERATOR_WEBHOOK_HOSTS": "a.ar-system.svc, a.ar-system.svc.example.org",
        "AGENT_OPERATOR_WEBHOOK_ADDR": "", "AGENT_OPERATOR_METRICS_PORT": "8081",
        "AGENT_SIDECAR_IMAGE_PULL_SECRETS": "regcred, mirror"})
    assert o.lease == ("ar-system", "ar") and o.lease_seconds == 12
    assert o.webhook_cert_secret == ("ar-system", "ar-webhook-tls")
    assert o.webhook_hosts == ["a.ar-system.svc", "a.ar-system.svc.example.org"]
    assert o.webhook_addr is None  # every address, both families
    assert o.metrics_port == 8081
    assert o.sidecar.image_pull_secrets == ("regcred", "mirror")
    assert parse(["--no-webhook", "--webhook-addr", "[::1]"], env={}).webhook_addr == "::1"


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
