"""The chart's `limits.redis` values reach the operator, which pushes them to the
sidecars: the address as a value, the password and CA only through Secrets."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from agent_operator.options import parse
from helm_support import OfflineHelm, env_of, operator_container

pytestmark = pytest.mark.controlplane  # the helm binary comes with the test binaries

VALUES = {
    "limits": {
        "redis": {
            "url": "rediss://redis.data:6380/0",
            "passwordSecret": {"name": "redis-auth", "key": "password"},
            "caSecret": {"name": "redis-ca", "key": "ca.crt"},
        }
    }
}


@pytest.fixture(scope="module")
def offline_helm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OfflineHelm]:
    from support.controlplane import find_assets

    yield OfflineHelm(find_assets(("helm",)) / "helm", tmp_path_factory.mktemp("helm-home"))


def test_the_redis_values_become_the_operators_environment(offline_helm: OfflineHelm) -> None:
    """What was tried: the chart rendered with a Redis address, a password Secret and a
    CA Secret: the operator's container gets the address as a value and the other two
    from the Secrets (never as values), and the operator reads them into its settings."""
    env = env_of(operator_container(offline_helm.render(VALUES)))

    assert env["AGENT_OPERATOR_LIMITS_REDIS_URL"] == "rediss://redis.data:6380/0"
    password = json.loads(env["AGENT_OPERATOR_LIMITS_REDIS_PASSWORD"])
    assert password == {"secretKeyRef": {"name": "redis-auth", "key": "password"}}
    ca = json.loads(env["AGENT_OPERATOR_LIMITS_REDIS_CA"])
    assert ca == {"secretKeyRef": {"name": "redis-ca", "key": "ca.crt"}}
    options = parse(["--no-webhook"], {"AGENT_OPERATOR_LIMITS_REDIS_URL": "rediss://r:6380/0",
                                       "AGENT_OPERATOR_LIMITS_REDIS_PASSWORD": "pw"})  # fmt: skip
    assert options.limits.redis_url == "rediss://r:6380/0" and options.limits.password == "pw"
    assert "pw" not in repr(options.limits)


def test_no_redis_sets_nothing(offline_helm: OfflineHelm) -> None:
    """What was tried: the default values: no limits variable at all (each pod then
    counts its share in memory)."""
    env = env_of(operator_container(offline_helm.render()))

    assert not [name for name in env if "LIMITS" in name]


def test_a_url_that_is_not_redis_is_refused(offline_helm: OfflineHelm) -> None:
    """What was tried: an http:// address: the schema refuses it, naming the value."""
    bad = {"limits": {"redis": {"url": "http://redis:6379"}}}
    with pytest.raises(AssertionError) as caught:
        offline_helm.render(bad)
    assert "'/limits/redis/url': 'http://redis:6379' does not match" in str(caught.value)
