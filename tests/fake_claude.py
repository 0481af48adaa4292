"""A scripted Anthropic Messages API behind httpx2.MockTransport: the real SDK, no network.

Each scripted reply is a callable(request_json) -> httpx2.Response; helpers build JSON messages,
SSE streams, errors and timeouts. Every request body is recorded for assertions.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import anthropic
import httpx2

Reply = Callable[[dict[str, Any]], httpx2.Response]


def _usage(inp: int = 100, out: int = 20) -> dict[str, int]:
    return {"input_tokens": inp, "output_tokens": out, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0}


def cite(source: str, index: int, text: str = "") -> dict[str, Any]:
    return {"type": "search_result_location", "source": source, "title": "t", "cited_text": text,
            "search_result_index": index, "start_block_index": 0, "end_block_index": 1}


def message(blocks: list[dict[str, Any]], stop: str = "end_turn", model: str | None = None) -> Reply:
    def reply(body: dict[str, Any]) -> httpx2.Response:
        return httpx2.Response(200, json={
            "id": "msg_test", "type": "message", "role": "assistant", "model": model or body["model"],
            "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": _usage()})
    return reply


def text(t: str, citations: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"type": "text", "text": t}
    if citations is not None:
        block["citations"] = citations
    return block


def tool_use(input_: Any, name: str = "search_documents", id_: str = "toolu_1") -> dict[str, Any]:
    return {"type": "tool_use", "id": id_, "name": name, "input": input_}


def stream(pieces: list[str], citations: list[dict[str, Any]]) -> Reply:
    def reply(body: dict[str, Any]) -> httpx2.Response:
        events: list[tuple[str, dict[str, Any]]] = [
            ("message_start", {"type": "message_start", "message": {
                "id": "msg_s", "type": "message", "role": "assistant", "model": body["model"], "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": _usage(out=1)}}),
            ("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": "", "citations": []}}),
        ]
        for p in pieces:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "text_delta", "text": p}}))
        for c in citations:
            events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                                   "delta": {"type": "citations_delta", "citation": c}}))
        events += [
            ("content_block_stop", {"type": "content_block_stop", "index": 0}),
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                               "usage": {"output_tokens": 20}}),
            ("message_stop", {"type": "message_stop"}),
        ]
        sse = "".join(f"event: {name}\ndata: {json.dumps(data)}\n\n" for name, data in events)
        return httpx2.Response(200, headers={"content-type": "text/event-stream"}, content=sse.encode())
    return reply


def error(status: int, kind: str = "overloaded_error") -> Reply:
    def reply(body: dict[str, Any]) -> httpx2.Response:
        return httpx2.Response(status, headers={"retry-after-ms": "10"},
                               json={"type": "error", "error": {"type": kind, "message": f"test {status}"}})
    return reply


def model_info() -> Reply:
    """GET /v1/models/{id}: the model exists."""
    def reply(body: dict[str, Any]) -> httpx2.Response:
        return httpx2.Response(200, json={"type": "model", "id": body["path"].rsplit("/", 1)[-1],
                                          "display_name": "Claude", "created_at": "2026-01-01T00:00:00Z"})
    return reply


def timeout() -> Reply:
    def reply(body: dict[str, Any]) -> httpx2.Response:
        raise httpx2.ReadTimeout("scripted timeout")
    return reply


class FakeClaude:
    """Replies in script order; after the script, repeats the last reply."""

    def __init__(self, *script: Reply) -> None:
        self.script = list(script)
        self.requests: list[dict[str, Any]] = []

    def handler(self, request: httpx2.Request) -> httpx2.Response:
        body = json.loads(request.content or b"{}") | {"path": request.url.path}
        self.requests.append(body)
        reply = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return reply(body)

    def client(self, max_retries: int = 2) -> anthropic.Anthropic:
        return anthropic.Anthropic(api_key="test-key", max_retries=max_retries,
                                   http_client=httpx2.Client(transport=httpx2.MockTransport(self.handler)))

    @property
    def models(self) -> list[str]:
        return [r["model"] for r in self.requests]
