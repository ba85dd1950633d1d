"""A small OpenAI-compatible HTTP server for the ``llm`` and ``embedding`` node tests.

It serves ``POST /v1/chat/completions`` and ``POST /v1/embeddings`` on a free port of 127.0.0.1
(stdlib ``ThreadingHTTPServer`` in a background thread), answers 401 unless the request carries
``Authorization: Bearer <api_key>`` (quoting the key it got, as careless servers do), records
every request, and can be told to answer the next requests with an error first (``fail_next``).

Chat completions answer ``"echo: <content of the last message>"``; embeddings are
``fake_embedding(text)``: letter counts (a-z), so equal texts have cosine similarity 1.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DIMENSION = 27


def fake_embedding(text: str) -> list[float]:
    """Letter counts of ``text`` (a-z), plus 1 in a last component so no vector is all zeros."""
    counts = [0.0] * DIMENSION
    for char in text.lower():
        if "a" <= char <= "z":
            counts[ord(char) - ord("a")] += 1.0
    counts[-1] = 1.0
    return counts


@dataclass
class Recorded:
    path: str
    authorization: str | None
    body: Any
    at: float


@dataclass
class FakeOpenAI:
    """What the server was sent and what it will answer next."""

    api_key: str
    base_url: str = ""
    requests: list[Recorded] = field(default_factory=list)
    failures: list[tuple[int, dict[str, str], Any]] = field(default_factory=list)
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail_next(self, status: int, body: Any = None, headers: dict[str, str] | None = None) -> None:
        """Answer the next request (of either route) with ``status``; queued in order."""
        with self.lock:
            self.failures.append((status, headers or {}, body))

    def answer(self, path: str, authorization: str | None, body: Any) -> tuple[int, dict[str, str], Any]:
        with self.lock:
            self.requests.append(Recorded(path, authorization, body, time.monotonic()))
            if self.failures:
                return self.failures.pop(0)
        if authorization != f"Bearer {self.api_key}":
            got = (authorization or "").removeprefix("Bearer ")
            return 401, {}, {"error": {"message": f"Incorrect API key provided: {got}", "type": "auth"}}
        if self.delay_s:
            time.sleep(self.delay_s)
        if path == "/v1/chat/completions":
            messages = body.get("messages") or [{}]
            content = messages[-1].get("content", "")
            return (
                200,
                {},
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": f"{body['model']}-0001",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": f"echo: {content}"},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": len(str(messages)), "completion_tokens": 3, "total_tokens": 9},
                    "echo": {k: body[k] for k in ("temperature", "max_tokens") if k in body},
                },
            )
        if path == "/v1/embeddings":
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            data = [
                {"object": "embedding", "index": i, "embedding": fake_embedding(text)}
                for i, text in enumerate(inputs)
            ]
            data.reverse()  # out of order on purpose: clients must sort by index
            return (
                200,
                {},
                {"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": 4}},
            )
        return 404, {}, {"error": {"message": f"no route {path}"}}


def _handler(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            status, headers, answer = fake.answer(self.path, self.headers.get("Authorization"), body)
            data = (answer if isinstance(answer, bytes) else json.dumps(answer).encode()) if answer else b""
            try:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except OSError:  # the client gave up (a timeout test)
                pass

    return Handler


@contextmanager
def fake_openai(api_key: str) -> Iterator[FakeOpenAI]:
    """A running server; ``.base_url`` is ``http://127.0.0.1:<port>/v1``."""
    fake = FakeOpenAI(api_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
