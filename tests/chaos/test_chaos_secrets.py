"""Canary secrets against a real sidecar process logging at DEBUG: an upstream that
echoes everything it was sent, answered plain and streamed, before and after content,
in both formats; a bad push; a bad --config file; a truncated state file; a short
admin token. No canary may reach an answer, stdout or stderr."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml
from chaos_support import AUTH, FREE_PORTS, ROOT, TOKEN, chat, report, start_sidecar
from fakes import Fail, FakeProvider, StreamError

KEY = "sk-canary-key-1111aaaa"
HEADER = "hdr-canary-2222bbbb"
USER, PASSWORD = "user-canary-3333", "pass-canary-3333cccc"
CANARIES = (KEY, HEADER, USER, PASSWORD, TOKEN)


def leaked(text: str) -> list[str]:
    return [c for c in CANARIES if c in text]


def canary_config(openai: FakeProvider, anthropic: FakeProvider) -> dict[str, Any]:
    agents = [
        {
            "name": name,
            "provider": fake.kind,
            "model": fake.model_default,
            "base_url": fake.base_url,
            "api_key": KEY,
            "headers": {"x-gateway": HEADER},
        }
        for fake, name in ((openai, "gpt"), (anthropic, "claude"))
    ]
    # A third agent whose URL carries credentials (a gateway's basic auth).
    agents.append(
        {
            **agents[0],
            "name": "gateway",
            "base_url": openai.base_url.replace("://", f"://{USER}:{PASSWORD}@"),
        }
    )
    return {
        "version": 1,
        "agents": agents,
        "routes": [
            {"name": "default", "agents": ["gateway", "gpt", "claude"], "retries": 0, "backoff": 0}
        ],
    }


def echo(fake: FakeProvider) -> str:
    url = fake.base_url.replace("://", f"://{USER}:{PASSWORD}@")
    return f"denied: key={KEY} x-gateway={HEADER} url={url} admin={TOKEN}"


async def test_no_canary_reaches_an_answer_or_the_log(fake_factory: Any, tmp_path: Path) -> None:
    openai = await fake_factory("openai", api_key=KEY)
    anthropic = await fake_factory("anthropic", api_key=KEY)
    sidecar = start_sidecar(canary_config(openai, anthropic), tmp_path, "--log-level", "debug")
    answers: list[str] = []
    try:
        async with httpx.AsyncClient(base_url=sidecar.app_url, timeout=30) as client:
            for stream in (False, True):
                for path, extra in (
                    ("/v1/chat/completions", {}),
                    ("/v1/messages", {"max_tokens": 16}),
                ):
                    headers = {"anthropic-version": "2023-06-01"} if extra else {}
                    for fake in (openai, anthropic):
                        fake.reset()
                        fake.script(Fail(401, message=echo(fake)), Fail(500, message=echo(fake)))
                    answer = await client.post(
                        path, json=chat(stream=stream, **extra), headers=headers
                    )
                    answers.append(answer.text)
                    if stream:  # after content: the error arrives in band
                        for fake in (openai, anthropic):
                            fake.reset()
                            fake.script(StreamError(after=2, message=echo(fake)))
                        answer = await client.post(
                            path, json=chat(stream=True, **extra), headers=headers
                        )
                        assert "error" in answer.text
                        answers.append(answer.text)
            async with httpx.AsyncClient(base_url=sidecar.admin_url) as admin:
                answers.append((await admin.get("/config", headers=AUTH)).text)
                bad = yaml.safe_dump(canary_config(openai, anthropic)).replace(
                    f"api_key: {KEY}", f"api_key: {KEY}: [", 1
                )
                refused = await admin.put("/config", content=bad.encode(), headers=AUTH)
                assert refused.status_code == 400
                answers.append(refused.text)
                wrong = await admin.get("/config", headers={"Authorization": f"Bearer {KEY}"})
                assert wrong.status_code == 401
    finally:
        sidecar.terminate()
        sidecar.wait()
        stderr = sidecar.stderr()
        sidecar.kill()
    for text in answers:
        assert not leaked(text.replace(TOKEN, "") if text.startswith('{"version"') else text), text
    assert not leaked(stderr), [line for line in stderr.splitlines() if leaked(line)][:5]
    assert "refused a config push" in stderr  # the bad push was logged, scrubbed
    report(
        "canary secrets",
        f"{len(answers)} error answers and the DEBUG log",
        "upstreams echoing key, header, URL credentials, admin token",
        "a bad push, a wrong token",
        "no canary in any answer or log line",
    )


def run_sidecar(
    args: list[str], env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """A sidecar that is expected to stop at start."""
    return subprocess.run(
        [sys.executable, "-m", "agent_sidecar", *FREE_PORTS, *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_bad_files_at_start_never_echo_a_key(tmp_path: Path) -> None:
    # A --config file with a syntax error on the key's line: exit 2, the line not quoted.
    config = tmp_path / "router.yaml"
    config.write_text(f"version: 1\nagents:\n  - name: a\n    api_key: {KEY}: [\n")
    bad_file = run_sidecar(["--config", str(config)], {"AGENT_SIDECAR_TOKEN": TOKEN})
    assert bad_file.returncode == 2, bad_file.stderr
    assert "not valid YAML at line 4" in bad_file.stderr
    # A short admin token: exit 2 with the reason, not the token.
    short = run_sidecar([], {"AGENT_SIDECAR_TOKEN": "tiny-token"})
    assert short.returncode == 2 and "at least 16" in short.stderr
    assert "tiny-token" not in short.stderr + short.stdout
    # A state file cut in the middle (it holds keys in clear): ignored with a warning.
    state = tmp_path / "state"
    state.mkdir()
    document = json.dumps(
        {
            "version": 3,
            "agents": [{"name": "a", "provider": "openai", "model": "gpt-4o", "api_key": KEY}],
        }
    )
    (state / "config.json").write_text(document[: document.index(KEY) + 8])
    truncated = start_sidecar(None, tmp_path)  # it starts, and waits for a push
    truncated.terminate()
    truncated.wait()
    stderr = truncated.stderr()
    truncated.kill()
    assert "ignoring the persisted config" in stderr
    for output in (bad_file.stderr, bad_file.stdout, stderr):
        assert not leaked(output), output
    report(
        "bad files at start",
        "-",
        "-",
        "a YAML error on a key's line, a 10-character token, a truncated state file",
        "no key or token in any message",
    )
