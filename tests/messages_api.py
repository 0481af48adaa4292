"""A Messages API on a real loopback socket, for tests of what the answerer does when the model misbehaves:
the official SDK talks HTTP to it exactly as to the real API (no mock of the SDK, no mock transport).

It serves POST /v1/messages (a JSON message, or SSE when `stream` is set) citing the first search result, or,
for a forced `search_queries` tool call (the query rewriter), one rewritten query,
and GET /v1/models/{id} (the start-up check). `fail` makes every request answer an API error (status and
error type, as the real API's error body); `refuse` refuses only requests for which it returns True (a
request whose content is the problem). Every request body is recorded.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from engine.broker import free_port

USAGE = {"input_tokens": 100, "output_tokens": 20, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def _message(body: dict[str, Any]) -> dict[str, Any]:
    # the first search result sent (a conversation's earlier turns come first, as plain text messages)
    first = next((b for m in body["messages"] if m["role"] == "user" for b in m["content"]
                  if isinstance(b, dict) and b.get("type") == "search_result"), None)
    cites = [{"type": "search_result_location", "source": first["source"], "title": first["title"], "cited_text": "",
              "search_result_index": 0, "start_block_index": 0, "end_block_index": 1}] if first else []
    return {"id": "msg_local", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "text", "text": "From the documents.", "citations": cites}],
            "stop_reason": "end_turn", "stop_sequence": None, "usage": USAGE}


def _tool_call(body: dict[str, Any], rewrite: Callable[[str], str]) -> dict[str, Any]:
    """The reply to a forced `search_queries` call (the query rewriter): one query, `rewrite` of the request's text."""
    text = "".join(b.get("text", "") for b in body["messages"][-1]["content"] if isinstance(b, dict))
    return {"id": "msg_local_tool", "type": "message", "role": "assistant", "model": body["model"],
            "content": [{"type": "tool_use", "id": "toolu_local", "name": "search_queries",
                         "input": {"queries": [rewrite(text)]}}],
            "stop_reason": "tool_use", "stop_sequence": None, "usage": USAGE}


def _sse(message: dict[str, Any]) -> bytes:
    text = message["content"][0]["text"]
    events: list[tuple[str, dict[str, Any]]] = [
        ("message_start", {"type": "message_start", "message": message | {"content": [], "stop_reason": None}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": "", "citations": []}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": text}}),
        *[("content_block_delta", {"type": "content_block_delta", "index": 0,
                                   "delta": {"type": "citations_delta", "citation": c}})
          for c in message["content"][0]["citations"]],
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                           "usage": {"output_tokens": 20}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events).encode()


def _standalone(text: str) -> str:
    first = next((line.removeprefix("User: ") for line in text.splitlines() if line.startswith("User: ")), "")
    follow_up = text.rsplit("Follow-up question: ", 1)[-1].strip()
    return f"{follow_up} ({first})" if first else follow_up


class MessagesApi:
    """`with MessagesApi() as api:` then point the SDK at `api.url`."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        #: (HTTP status, error type) every request is answered with; None: answer.
        self.fail: tuple[int, str] | None = None
        #: Refuse (400 invalid_request_error) the message requests for which this returns True.
        self.refuse: Callable[[dict[str, Any]], bool] | None = None
        #: The standalone query a forced `search_queries` call (the conversation rewriter) answers, from the text
        #: the rewriter sent; by default the follow-up question with its conversation's first question.
        self.rewrite: Callable[[str], str] = _standalone
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.send_header("request-id", "req_local")
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, kind: str) -> None:
                self._send(status, json.dumps({"type": "error", "error": {
                    "type": kind, "message": f"local Messages API: {kind}"}}).encode())

            def do_GET(self) -> None:
                if api.fail is not None:
                    return self._error(*api.fail)
                model = self.path.split("?")[0].rsplit("/", 1)[-1]
                self._send(200, json.dumps({"type": "model", "id": model, "display_name": model,
                                            "created_at": "2026-01-01T00:00:00Z"}).encode())

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                with api._lock:
                    api.requests.append(body)
                if api.fail is not None:
                    return self._error(*api.fail)
                if api.refuse is not None and api.refuse(body):
                    return self._error(400, "invalid_request_error")
                if (body.get("tool_choice") or {}).get("name") == "search_queries":
                    return self._send(200, json.dumps(_tool_call(body, api.rewrite)).encode())
                message = _message(body)
                if body.get("stream"):
                    return self._send(200, _sse(message), "text/event-stream")
                self._send(200, json.dumps(message).encode())

            def log_message(self, *args: Any) -> None:
                return

        return Handler

    def __enter__(self) -> MessagesApi:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="messages-api", daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
