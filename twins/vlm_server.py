"""A local OpenAI-compatible chat-completions server, the twin of a VLM endpoint: the real
openai client talks to it over loopback (tests, the fault campaign). A caller subclasses
`ChatHandler`, answers `do_POST` with `send_chat` or `send_json`, and serves it with `serving`."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def chat_completion(content: str, model: str = "test-vlm", prompt_tokens: int = 1,
                    completion_tokens: int = 1) -> dict:
    """A chat.completion reply whose one choice says `content`."""
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens}}


class ChatHandler(BaseHTTPRequestHandler):
    """Quiet request handler with JSON helpers; a client that already left is not an error."""

    def log_message(self, *args: Any) -> None:
        pass

    def read_json(self) -> dict:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def send_json(self, code: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except OSError:              # the client gave up (a timeout): nothing to answer
            pass

    def send_chat(self, content: str, **usage: Any) -> None:
        self.send_json(200, chat_completion(content, **usage))


@contextmanager
def serving(handler: type[ChatHandler], **attributes: Any) -> Iterator[ThreadingHTTPServer]:
    """`handler` on a free 127.0.0.1 port (base URL: `url(server)`), with `attributes` set on
    the server for the handler to read; shut down at the end of the block."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    for name, value in attributes.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def url(server: ThreadingHTTPServer) -> str:
    """The server's OpenAI base URL."""
    return f"http://127.0.0.1:{server.server_address[1]}/v1"
