"""The two servers the sidecar benchmark compares against.

    python bench/sidecar_servers.py upstream [--port 0]
        A canned OpenAI-compatible upstream: precomputed bytes on a raw asyncio protocol
        (uvloop), so that on a small machine it is never the bottleneck. Plain answers are
        JSON; a body asking for `"stream":true` gets a precomputed SSE stream. A path
        ending in `/responses` gets OpenAI's Responses API answer and events instead, one
        ending in `/messages` Anthropic's Messages answer and events.

    python bench/sidecar_servers.py thin --upstream URL [--port 0]
        The thinnest aiohttp pass-through: forwards the body to the upstream over a
        keep-alive aiohttp client session and relays the answer (streamed chunk by chunk).

    python bench/sidecar_servers.py bytes --upstream URL [--port 0]
        The least any relay does: no HTTP at all, a connection to the upstream for each
        client connection and the bytes copied both ways (uvloop). What two more loopback
        hops cost, whatever runs on them: the floor under every relay's latency.

Each prints `READY <url>` once listening and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal

PLAIN = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "gpt-4o-mini",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello from the bench upstream"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
    }
).encode()


def _stream_body() -> bytes:
    head = {
        "id": "chatcmpl-bench",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "gpt-4o-mini",
    }
    frames = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}]
    for word in ["Hello", " from", " the", " bench", " upstream"]:
        frames.append({**head, "choices": [{"index": 0, "delta": {"content": word}}]})
    frames.append({**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    frames.append(
        {
            **head,
            "choices": [],
            "usage": {"prompt_tokens": 5, "completion_tokens": 6, "total_tokens": 11},
        }
    )
    body = b"".join(b"data: " + json.dumps(f).encode() + b"\n\n" for f in frames)
    return body + b"data: [DONE]\n\n"


def _response(content_type: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: "
        + content_type
        + b"\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\nConnection: keep-alive\r\n\r\n"
        + body
    )


def _responses_bodies() -> tuple[bytes, bytes]:
    """The Responses API's plain answer and stream of the same words."""
    words = ["Hello", " from", " the", " bench", " upstream"]
    text = "".join(words)
    item = {"id": "msg_bench", "type": "message", "status": "completed", "role": "assistant"}
    done_item = {**item, "content": [{"type": "output_text", "annotations": [], "text": text}]}
    response = {
        "id": "resp_bench",
        "object": "response",
        "created_at": 1700000000,
        "status": "completed",
        "model": "gpt-4o-mini",
        "output": [done_item],
        "usage": {"input_tokens": 5, "output_tokens": 6, "total_tokens": 11},
    }
    start = {**response, "status": "in_progress", "output": [], "usage": None}
    at = {"item_id": "msg_bench", "output_index": 0, "content_index": 0}
    part = {"type": "output_text", "annotations": [], "text": ""}
    events: list[dict[str, object]] = [
        {"type": "response.created", "response": start},
        {"type": "response.in_progress", "response": start},
        {"type": "response.output_item.added", "output_index": 0,
         "item": {**item, "status": "in_progress", "content": []}},
        {"type": "response.content_part.added", **at, "part": part},
        *({"type": "response.output_text.delta", **at, "delta": w} for w in words),
        {"type": "response.output_text.done", **at, "text": text},
        {"type": "response.content_part.done", **at, "part": {**part, "text": text}},
        {"type": "response.output_item.done", "output_index": 0, "item": done_item},
        {"type": "response.completed", "response": response},
    ]
    stream = b"".join(
        f"event: {e['type']}\ndata: ".encode()
        + json.dumps({**e, "sequence_number": n}).encode()
        + b"\n\n"
        for n, e in enumerate(events)
    )
    return json.dumps(response).encode(), stream


def _messages_bodies() -> tuple[bytes, bytes]:
    """Anthropic's Messages answer and stream of the same words."""
    words = ["Hello", " from", " the", " bench", " upstream"]
    message = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-bench",
        "content": [{"type": "text", "text": "".join(words)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 6},
    }
    start = {**message, "content": [], "stop_reason": None,
             "usage": {"input_tokens": 5, "output_tokens": 1}}
    events: list[dict[str, object]] = [
        {"type": "message_start", "message": start},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        *({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}}
          for w in words),
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
         "usage": {"output_tokens": 6}},
        {"type": "message_stop"},
    ]
    stream = b"".join(
        f"event: {e['type']}\ndata: ".encode() + json.dumps(e).encode() + b"\n\n" for e in events
    )
    return json.dumps(message).encode(), stream


PLAIN_RESPONSE = _response(b"application/json", PLAIN)
STREAM_RESPONSE = _response(b"text/event-stream", _stream_body())
_RESPONSES_PLAIN, _RESPONSES_STREAM = _responses_bodies()
RESPONSES_PLAIN = _response(b"application/json", _RESPONSES_PLAIN)
RESPONSES_STREAM = _response(b"text/event-stream", _RESPONSES_STREAM)
_MESSAGES_PLAIN, _MESSAGES_STREAM = _messages_bodies()
MESSAGES_PLAIN = _response(b"application/json", _MESSAGES_PLAIN)
MESSAGES_STREAM = _response(b"text/event-stream", _MESSAGES_STREAM)


class Canned(asyncio.Protocol):
    """Just enough HTTP/1.1: keep-alive, Content-Length bodies, pipelining."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"content-length:")
            if at >= 0:
                length = int(head[at + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            streamed = b'"stream":true' in body or b'"stream": true' in body
            target = head.split(b"\r\n", 1)[0]
            if b"/responses " in target:
                self.transport.write(RESPONSES_STREAM if streamed else RESPONSES_PLAIN)
            elif b"/messages " in target:
                self.transport.write(MESSAGES_STREAM if streamed else MESSAGES_PLAIN)
            else:
                self.transport.write(STREAM_RESPONSE if streamed else PLAIN_RESPONSE)


async def upstream(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Canned, "127.0.0.1", port)
    print(f"READY http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await _until_signal()
    server.close()


async def thin(port: int, upstream_url: str) -> None:
    import aiohttp
    from aiohttp import web

    session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    async def forward(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        async with session.post(
            upstream_url + request.path, data=body, headers={"content-type": "application/json"}
        ) as answer:
            if answer.content_type != "text/event-stream":
                return web.Response(
                    status=answer.status, body=await answer.read(), content_type=answer.content_type
                )
            response = web.StreamResponse(status=answer.status)
            response.content_type = "text/event-stream"
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    app = web.Application()
    app.router.add_post("/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print(f"READY http://127.0.0.1:{runner.addresses[0][1]}", flush=True)
    await _until_signal()
    await runner.cleanup()
    await session.close()


class _Copy(asyncio.Protocol):
    """One side of a byte relay: what arrives goes to the other side as it is."""

    def __init__(self, other: asyncio.Transport | None = None) -> None:
        self.other = other
        self.early: list[bytes] = []  # arrived before the other side was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.other is None:
            self.early.append(data)
        else:
            self.other.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.other is not None:
            self.other.close()


async def byte_relay(port: int, upstream_url: str) -> None:
    loop = asyncio.get_running_loop()
    host, _, up_port = upstream_url.removeprefix("http://").partition(":")

    class Client(_Copy):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            self.connecting = loop.create_task(self.connect())

        async def connect(self) -> None:
            up, _ = await loop.create_connection(lambda: _Copy(self.transport), host, int(up_port))
            self.other = up
            for data in self.early:
                up.write(data)
            self.early.clear()

    server = await loop.create_server(Client, "127.0.0.1", port)
    print(f"READY http://127.0.0.1:{server.sockets[0].getsockname()[1]}", flush=True)
    await _until_signal()
    server.close()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def main() -> None:
    import uvloop

    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("server", choices=["upstream", "thin", "bytes"])
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--upstream", default="")
    args = p.parse_args()
    if args.server == "upstream":
        uvloop.run(upstream(args.port))
    else:
        relay = thin if args.server == "thin" else byte_relay
        uvloop.run(relay(args.port, args.upstream))


if __name__ == "__main__":
    main()
