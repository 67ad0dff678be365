"""A Redis that wants TLS and a password, as the config document reaches it: the
address as `rediss://`, the CA as `ca_file`, the password from `password_env`."""

from __future__ import annotations

from pathlib import Path

import pytest
from redis_support import RedisServer
from support.controlplane import CertificateAuthority

from agent import limits
from agent.config import AgentLimitsConfig, LimitsStoreConfig, parse_config
from agent.limits import Quota, make_store
from agent.limits_redis import RedisStore
from agent.types import Message, Request

PASSWORD = "s3cret-redis-password"
REQUEST = Request([Message("user", "hi")], max_tokens=10)


def drive(gen):  # type: ignore[no-untyped-def]
    value = None
    try:
        while True:
            value = gen.send(value).sync()
    except StopIteration as stop:
        return stop.value


@pytest.fixture
def tls_redis(tmp_path: Path):  # type: ignore[no-untyped-def]
    ca = CertificateAuthority("redis-ca")
    cert, key = ca.issue("redis", hosts=["127.0.0.1"], server=True).write(tmp_path, "redis")
    ca_file = tmp_path / "ca.crt"
    ca_file.write_bytes(ca.cert_pem)
    args = ("--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca_file), "--tls-auth-clients", "no",
            "--requirepass", PASSWORD)  # fmt: skip
    server = RedisServer(tmp_path, args, "rediss", ssl_ca_certs=str(ca_file), password=PASSWORD)
    server.start()
    try:
        yield server, ca_file
    finally:
        server.kill()


def test_tls_and_a_password_from_the_environment(tls_redis, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """What was tried: the store built from a config document naming a rediss:// URL,
    the CA file and the variable holding the password; admissions are counted in that
    Redis (its keys hold them), and the password appears in no repr."""
    server, ca_file = tls_redis
    monkeypatch.setenv("REDIS_PASSWORD", PASSWORD)
    config = LimitsStoreConfig(
        redis_url=server.url, password_env="REDIS_PASSWORD", ca_file=str(ca_file)
    )
    store = make_store(config)
    assert isinstance(store, RedisStore)
    quota = Quota.for_agent("tls", AgentLimitsConfig(rpm=2), store, 100)

    assert len(drive(limits.reserve([quota], REQUEST, None))) == 1
    assert len(drive(limits.reserve([quota], REQUEST, None))) == 1
    refused = drive(limits.reserve([quota], REQUEST, None))
    assert isinstance(refused, limits.QuotaExhaustedError)
    assert store.up and server.client().keys("agent-router:*agent:tls:rpm:*")
    assert PASSWORD not in repr(store) and PASSWORD not in repr(config)


def test_a_wrong_password_falls_back_to_the_share_never_unlimited(tls_redis) -> None:  # type: ignore[no-untyped-def]
    """What was tried: the right CA but a wrong password; the store counts here against
    its share (rpm 4 over 2 pods: 2) rather than failing or letting everything through."""
    server, ca_file = tls_redis
    store = RedisStore(server.url, password="wrong", shares=2, ca_file=str(ca_file))
    quota = Quota.for_agent("fallback", AgentLimitsConfig(rpm=4), store, 100)
    results = [drive(limits.reserve([quota], REQUEST, None)) for _ in range(4)]

    assert [isinstance(r, list) for r in results] == [True, True, False, False]
    assert not store.up


def test_a_delivered_password_and_ca_reach_redis_and_never_show(tls_redis) -> None:  # type: ignore[no-untyped-def]
    """What was tried: a config document carrying the password and the CA themselves
    (as the operator delivers them) and a URL with a password in it: the store admits in
    that Redis; the redacted document (GET /config, logs) shows neither password, the
    document delivered to a sidecar keeps the real one."""
    server, ca_file = tls_redis
    document = {
        "agents": [{"name": "a", "provider": "openai", "model": "gpt-4o", "limits": {"rpm": 5}}],
        "routes": [{"name": "r", "agents": ["a"]}],
        "limits_store": {
            "redis_url": server.url,
            "password": PASSWORD,
            "ca_pem": ca_file.read_text(),
        },
    }
    config = parse_config(document)
    store = make_store(config.limits_store)
    quota = Quota.for_agent("pushed", AgentLimitsConfig(rpm=5), store, 100)

    assert isinstance(drive(limits.reserve([quota], REQUEST, None)), list)
    assert server.client().keys("agent-router:*agent:pushed:rpm:*")
    with_url = parse_config(
        {**document, "limits_store": {"redis_url": f"rediss://:{PASSWORD}@127.0.0.1:1/0"}}
    )
    for shown in (config.redacted(), with_url.redacted()):
        assert PASSWORD not in str(shown)
    assert PASSWORD not in repr(config)
    assert config.document()["limits_store"]["password"] == PASSWORD
