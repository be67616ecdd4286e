"""Loopback HTTP servers that speak the OpenAI chat-completions and Anthropic messages wire formats.

Real sockets on 127.0.0.1 (port 0), one thread per connection, so the official clients run unmodified:
their retries, Retry-After handling and timeouts are exercised for real. Faults are scripted per request
(a queue for the next N requests, or a rule on the request), every request is logged (path, headers, body),
and a responder callback decides the model text from the request.

    with FakeOpenAIServer(latency_s=0.2) as srv:
        srv.script(rate_limited(0.1), server_error())   # the next two requests fail, then normal answers
        cfg = GeneratorCfg(backend="openai_compatible", base_url=srv.base_url, ...)

Each fault has the ``kind`` a client should count it as (medssr.llm.ledger.FAULT_KINDS), so a test can compare
what the server did (``srv.fault_counts()``, ``len(srv.requests)``) with what the generator reported.

Both also speak their batch endpoints (OpenAI: /v1/files upload, /v1/batches, /v1/files/{id}/content;
Anthropic: /v1/messages/batches[/{id}[/results]]). A batch ends on its ``batch_polls``-th status poll; its items
are answered by the responder, or marked by ``batch_rule(item) -> 'errored' | 'expired' | None``;
``srv.batch_creates`` counts creates and ``srv.batch_items`` logs every item request.
"""

from __future__ import annotations

import base64
import json
import re
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["Fault", "FakeAnthropicServer", "FakeOpenAIServer", "LoggedRequest", "auth_error", "count_tokens", "cut_body", "dropped",
           "empty_choices", "first_time_faults", "garbage", "malformed", "question_json", "question_responder", "rate_limited", "reply",
           "server_error", "slow", "timed_out"]


@dataclass
class Fault:
    """What to do to one request instead of (or on top of) a normal answer."""

    status: int | None = None  # answer with this HTTP error status (429, 500, 401, ...)
    retry_after: float | None = None  # Retry-After header, seconds
    delay_s: float = 0.0  # sleep before answering (longer than the client timeout = a timeout)
    malformed: bool = False  # 200 with a truncated JSON body
    message: str = "fault injected by the test server"  # error message; may use {authorization} / {x-api-key} / {basic-password}
    content: str | None = None  # a normal 200, but with this model text (e.g. a truncated question)
    cut: bool = False  # 200 announcing the whole body's length, sending half of it, then closing the connection
    drop: bool = False  # close the connection without any answer
    body: str | None = None  # a 200 with exactly this body (garbage); may use {authorization} / {x-api-key}
    empty: bool = False  # a 200 in the wire format but without choices (OpenAI) / content (Anthropic)
    kind: str | None = None  # what a client should count this as; derived from the fields when None

    @property
    def fault_kind(self) -> str | None:
        """The medssr fault kind this is (None: a slow or odd but successful answer)."""
        if self.kind is not None:
            return self.kind
        if self.status is not None:
            return {429: "rate_limit", 408: "timeout"}.get(self.status, "server_error" if self.status >= 500 else "client_error")
        if self.malformed or self.cut or self.body is not None or self.empty:
            return "malformed_body"
        return "connection" if self.drop else None


def rate_limited(retry_after: float = 0.1) -> Fault:
    return Fault(status=429, retry_after=retry_after, message="Rate limit reached; retry later")


def server_error(status: int = 500) -> Fault:
    return Fault(status=status, message="The server had an error while processing your request")


def slow(delay_s: float) -> Fault:
    return Fault(delay_s=delay_s)


def timed_out(delay_s: float) -> Fault:
    """An answer later than the client's timeout (the caller picks a delay beyond timeout_s)."""
    return Fault(delay_s=delay_s, kind="timeout")


def malformed() -> Fault:
    return Fault(malformed=True)


def cut_body() -> Fault:
    return Fault(cut=True)


def dropped() -> Fault:
    return Fault(drop=True)


def garbage(text: str = "<html><body>502 Bad Gateway</body></html>") -> Fault:
    return Fault(body=text)


def empty_choices() -> Fault:
    return Fault(empty=True)


def reply(content: str) -> Fault:
    return Fault(content=content)


def auth_error(echo_key: bool = True) -> Fault:
    """401 whose message echoes the credential the client sent, like a careless proxy would."""
    msg = "Incorrect API key provided: {authorization}{x-api-key} (password {basic-password})"
    return Fault(status=401, message=msg if echo_key else "Invalid API key")


@dataclass
class LoggedRequest:
    """One request as the server received it."""

    path: str
    headers: dict[str, str]  # lower-cased names
    raw: str
    body: dict[str, Any] | None
    messages: list[tuple[str, str]] = field(default_factory=list)  # (role, text), system first
    fault: Fault | None = None
    t: float = 0.0

    @property
    def prompt(self) -> str:
        return "\n".join(c for _, c in self.messages)

    @property
    def last_user(self) -> str:
        return next((c for r, c in reversed(self.messages) if r == "user"), "")

    @property
    def schema(self) -> dict | None:
        """The JSON schema asked for (OpenAI response_format or Anthropic forced tool), if any."""
        b = self.body or {}
        rf = b.get("response_format") or {}
        if rf.get("type") == "json_schema":
            return rf["json_schema"].get("schema")
        tools = b.get("tools") or []
        return tools[0].get("input_schema") if tools else None


def count_tokens(text: str) -> int:
    """The fake servers' tokenizer: whitespace words (deterministic, good enough for usage accounting tests)."""
    return len(text.split())


def question_json(stem: str, answer: str = "A") -> str:
    """A valid four-option question in the shape the synthesis prompts ask for."""
    return json.dumps({"question": stem, "options": {"A": "Option one", "B": "Option two", "C": "Option three", "D": "Option four"},
                       "answer": answer, "explanation": "Because the test server says so."})


def question_responder(req: LoggedRequest) -> str:
    """Default responder: a valid question echoing the start of the last user message."""
    return question_json("Echo: " + req.last_user[:80])


Responder = Callable[[LoggedRequest], str]
FaultRule = Callable[[LoggedRequest], "Fault | None"]


def first_time_faults(faults: Iterable[Fault]) -> FaultRule:
    """A rule giving the n-th distinct prompt the n-th fault on its first arrival only: every fault is met once
    and its retry succeeds, whatever the concurrency (arrival order decides only which prompt gets which)."""
    queue = deque(faults)
    seen: set[str] = set()
    lock = threading.Lock()

    def rule(req: LoggedRequest) -> Fault | None:
        with lock:
            if req.prompt in seen:
                return None
            seen.add(req.prompt)
            return queue.popleft() if queue else None

    return rule


class _FakeLLMServer:
    """Shared machinery; subclasses define the paths and the wire format."""

    LIST_ENVELOPE: dict[str, Any] = {}  # extra keys of a batch list page on this wire

    path = ""

    def __init__(self, responder: Responder = question_responder, latency_s: float = 0.0, faults: Iterable[Fault | None] = (),
                 rule: FaultRule | None = None, model: str = "fake-model", batch_polls: int = 1,
                 batch_rule: Callable[[LoggedRequest], str | None] | None = None,
                 batch_error: str = "Invalid request: injected by the test server"):
        self.responder = responder
        self.latency_s = latency_s
        self.rule = rule
        self.model = model
        self.requests: list[LoggedRequest] = []
        self._faults: deque[Fault | None] = deque(faults)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._n = 0
        self.in_flight = 0
        self.max_in_flight = 0  # most requests handled at once (concurrency tests)
        self.batch_polls = batch_polls  # the status poll on which a batch ends (the ones before report it running)
        self.batch_rule = batch_rule
        self.batch_error = batch_error  # an errored item's message; may use {authorization} / {x-api-key}
        self.batch_fails = 0  # OpenAI: this many next batches fail as a whole (validation), with no output at all
        self.batch_creates = 0
        self.batch_polls_seen = 0
        self.batches: dict[str, dict[str, Any]] = {}
        self.files: dict[str, bytes] = {}
        self.batch_items: list[LoggedRequest] = []

    # -- lifecycle ------------------------------------------------------------------------------------------
    def start(self) -> _FakeLLMServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else headers and body in two writes meet delayed ACK: +40 ms a request

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                server._handle(self)

            def do_GET(self) -> None:  # noqa: N802
                if server._batch_route(self, "GET"):
                    pass
                elif self.path == "/_stats":  # for callers in another process (the benchmark)
                    server._send(self, 200, json.dumps(server.stats()))
                elif self.path == "/_reset":
                    server.reset_stats()
                    server._send(self, 200, "{}")
                else:
                    server._send(self, 404, server._error_body(404, f"no route {self.path}"))

            def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name=f"{type(self).__name__}")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # wakes handlers sleeping in a delay
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> _FakeLLMServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._httpd is not None, "server not started"
        return self._httpd.server_address[1]

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- scripting and inspection ----------------------------------------------------------------------------
    def script(self, *faults: Fault | None) -> None:
        """Apply these to the next requests, in arrival order (None = answer normally)."""
        with self._lock:
            self._faults.extend(faults)

    def calls(self, text: str | None = None) -> int:
        """Requests seen so far (whose prompt contains ``text``, if given)."""
        with self._lock:
            return sum(1 for r in self.requests if text is None or text in r.prompt)

    def fault_counts(self) -> dict[str, int]:
        """Faults applied so far, by the kind a client should count them as."""
        with self._lock:
            return dict(Counter(k for r in self.requests if r.fault is not None and (k := r.fault.fault_kind) is not None))

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"calls": len(self.requests), "max_in_flight": self.max_in_flight, "in_flight": self.in_flight}

    def reset_stats(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def log_text(self) -> str:
        """Everything the server received except the credential headers (for secret-leak checks)."""
        with self._lock:
            return "\n".join(r.raw + json.dumps({k: v for k, v in r.headers.items() if k not in ("authorization", "x-api-key")})
                             for r in self.requests)

    # -- request handling -----------------------------------------------------------------------------------
    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._answer(h)
        finally:
            with self._lock:
                self.in_flight -= 1

    def _answer(self, h: BaseHTTPRequestHandler) -> None:
        if self._batch_route(h, "POST"):
            return
        raw = h.rfile.read(int(h.headers.get("content-length") or 0)).decode("utf-8", "replace")
        headers = {k.lower(): v for k, v in h.headers.items()}
        if h.path.rstrip("/") != self.path:
            self._send(h, 404, self._error_body(404, f"no route {h.path}"))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        req = LoggedRequest(h.path, headers, raw, body, self._messages(body or {}), t=time.time())
        with self._lock:
            fault = self._faults.popleft() if self._faults else None
            self._n += 1
            n = self._n
        if fault is None and self.rule is not None:
            fault = self.rule(req)
        req.fault = fault
        with self._lock:
            self.requests.append(req)
        if body is None:
            self._send(h, 400, self._error_body(400, "request body is not JSON"))
            return
        delay = self.latency_s + (fault.delay_s if fault else 0.0)
        if delay and self._stop.wait(delay):
            h.close_connection = True  # shutting down: drop the request
            return
        echo = lambda text: re.sub(r"\{([a-z-]+)\}", lambda m: _echoed(headers, m.group(1)), text)  # noqa: E731
        if fault is not None and fault.drop:
            h.close_connection = True
            return
        if fault is not None and fault.status is not None:
            extra = {"retry-after": f"{fault.retry_after:g}"} if fault.retry_after is not None else {}
            self._send(h, fault.status, self._error_body(fault.status, echo(fault.message)), extra)
            return
        if fault is not None and fault.body is not None:
            self._send(h, 200, echo(fault.body))
            return
        content = echo(fault.content) if fault is not None and fault.content is not None else self.responder(req)
        ok = self._ok_body(req, content, n)
        if fault is not None and fault.empty:
            ok = self._emptied(ok)
        payload = json.dumps(ok)
        if fault is not None and fault.malformed:
            payload = payload[: len(payload) // 2]
        self._send(h, 200, payload, cut=fault is not None and fault.cut)

    def _send(self, h: BaseHTTPRequestHandler, status: int, payload: str, headers: dict[str, str] | None = None, cut: bool = False) -> None:
        data = payload.encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("content-type", "application/json")
            h.send_header("content-length", str(len(data)))
            for k, v in (headers or {}).items():
                h.send_header(k, v)
            h.end_headers()
            h.wfile.write(data[: len(data) // 2] if cut else data)
            h.wfile.flush()
            if cut:
                h.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout) before we answered

    # -- batch endpoints ----------------------------------------------------------------------------------------
    def _batch_route(self, h: BaseHTTPRequestHandler, method: str) -> bool:
        """Answer a batch-endpoint request (True), or leave it to the chat path (False)."""
        path = h.path.split("?", 1)[0].rstrip("/")
        route = next(((name, m.groupdict()) for name, (verb, pattern) in self.batch_routes.items()
                      if verb == method and (m := re.fullmatch(pattern, path))), None)
        if route is None:
            return False
        raw = h.rfile.read(int(h.headers.get("content-length") or 0)) if method == "POST" else b""
        headers = {k.lower(): v for k, v in h.headers.items()}
        text = raw.decode("utf-8", "replace")
        try:
            body = json.loads(text) if text and "json" in headers.get("content-type", "") else None
        except ValueError:
            body = None
        with self._lock:
            self.requests.append(LoggedRequest(h.path, headers, text, body, t=time.time()))
            fault = self._faults.popleft() if self._faults else None
        if fault is not None and fault.status is not None:
            self._send(h, fault.status, self._error_body(fault.status, fault.message))
            return True
        name, args = route
        status, payload, ctype = getattr(self, f"_b_{name}")(raw, headers, body, **args)
        data = payload.encode("utf-8")
        try:
            h.send_response(status)
            h.send_header("content-type", ctype)
            h.send_header("content-length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            h.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        return True

    batch_routes: dict[str, tuple[str, str]] = {}

    def _batch_items(self, headers: dict[str, str], items: list[tuple[str, dict]]) -> list[dict[str, Any]]:
        """Answer every (custom_id, request body) now; the answers are shown once the batch ends."""
        out = []
        for custom_id, body in items:
            req = LoggedRequest(self.path, headers, json.dumps(body), body, self._messages(body), t=time.time())
            with self._lock:
                self.batch_items.append(req)
                self._n += 1
                n = self._n
            outcome = self.batch_rule(req) if self.batch_rule is not None else None
            error = re.sub(r"\{([a-z-]+)\}", lambda m: _echoed(headers, m.group(1)), self.batch_error)
            out.append({"custom_id": custom_id, "outcome": outcome or "succeeded", "error": error,
                        "body": self._ok_body(req, self.responder(req), n) if outcome is None else None})
        return out

    def _poll(self, batch_id: str) -> dict[str, Any] | None:
        """One status poll: the batch ends on the ``batch_polls``-th."""
        with self._lock:
            b = self.batches.get(batch_id)
            if b is None:
                return None
            self.batch_polls_seen += 1
            b["polls"] += 1
            if b["polls"] >= self.batch_polls:
                b["ended"] = True
            return b

    def _b_retrieve(self, raw: bytes, headers: dict[str, str], body: Any, batch_id: str) -> tuple[int, str, str]:
        b = self._poll(batch_id)
        if b is None:
            return 404, self._error_body(404, f"no batch {batch_id!r}"), "application/json"
        return 200, json.dumps(self._batch_json(b)), "application/json"

    def _b_list(self, raw: bytes, headers: dict[str, str], body: Any) -> tuple[int, str, str]:
        """Batches newest first, in the wire's list envelope (OpenAI adds ``object: list``)."""
        with self._lock:
            data = [self._batch_json(b) for b in reversed(list(self.batches.values()))]
        page = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
        return 200, json.dumps({**self.LIST_ENVELOPE, **page}), "application/json"

    def _emptied(self, ok: dict) -> dict:
        raise NotImplementedError

    def _messages(self, body: dict) -> list[tuple[str, str]]:
        raise NotImplementedError

    def _ok_body(self, req: LoggedRequest, content: str, n: int) -> dict:
        raise NotImplementedError

    def _error_body(self, status: int, message: str) -> str:
        raise NotImplementedError


def _echoed(headers: dict[str, str], name: str) -> str:
    """A request header for an echoing fault; ``basic-password`` is the password inside a Basic Authorization."""
    if name != "basic-password":
        return headers.get(name, "")
    scheme, _, value = headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    return base64.b64decode(value).decode("utf-8", "replace").partition(":")[2]


def _iso(t: float) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


def _text_of(content: Any) -> str:
    """Message content as text: a string, or the text parts of a list of content blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(b.get("text", "") for b in content if isinstance(b, dict))
    return ""


_OPENAI_ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 429: "rate_limit_exceeded"}


class FakeOpenAIServer(_FakeLLMServer):
    """POST /v1/chat/completions; ``base_url`` is what AsyncOpenAI wants."""

    LIST_ENVELOPE: dict[str, Any] = {"object": "list"}

    path = "/v1/chat/completions"

    @property
    def base_url(self) -> str:
        return f"{self.root_url}/v1"

    def _messages(self, body: dict) -> list[tuple[str, str]]:
        return [(m.get("role", ""), _text_of(m.get("content"))) for m in body.get("messages") or []]

    def _ok_body(self, req: LoggedRequest, content: str, n: int) -> dict:
        body = req.body or {}
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        words = content.split(" ")
        finish = "stop"
        if limit is not None and count_tokens(content) > limit:
            content, finish = " ".join(words[:limit]), "length"
        n_in, n_out = count_tokens(req.prompt), count_tokens(content)
        return {"id": f"chatcmpl-fake{n}", "object": "chat.completion", "created": int(time.time()), "model": body.get("model", self.model),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": content, "refusal": None},
                             "logprobs": None, "finish_reason": finish}],
                "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}}

    def _emptied(self, ok: dict) -> dict:
        return {**ok, "choices": []}

    batch_routes = {"upload": ("POST", r"/v1/files"), "create": ("POST", r"/v1/batches"), "list": ("GET", r"/v1/batches"),
                    "retrieve": ("GET", r"/v1/batches/(?P<batch_id>[\w-]+)"),
                    "content": ("GET", r"/v1/files/(?P<file_id>[\w-]+)/content")}

    def _b_upload(self, raw: bytes, headers: dict[str, str], body: Any) -> tuple[int, str, str]:
        from email.parser import BytesParser
        from email.policy import HTTP

        msg = BytesParser(policy=HTTP).parsebytes(b"content-type: " + headers["content-type"].encode() + b"\r\n\r\n" + raw)
        fields = {part.get_param("name", header="content-disposition"): part for part in msg.iter_parts()}
        part = fields["file"]
        content = part.get_payload(decode=True)
        with self._lock:
            file_id = f"file-fake{len(self.files) + 1}"
            self.files[file_id] = content
        return 200, json.dumps({"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()),
                                "filename": part.get_filename() or "input.jsonl", "purpose": fields["purpose"].get_content().strip(),
                                "status": "processed"}), "application/json"

    def _b_create(self, raw: bytes, headers: dict[str, str], body: Any) -> tuple[int, str, str]:
        body = body or {}
        content = self.files.get(body.get("input_file_id", ""))
        if content is None:
            return 404, self._error_body(404, f"no file {body.get('input_file_id')!r}"), "application/json"
        lines = [json.loads(line) for line in content.decode("utf-8").splitlines() if line.strip()]
        items = self._batch_items(headers, [(row["custom_id"], row["body"]) for row in lines])
        with self._lock:
            self.batch_creates += 1
            batch_id = f"batch_fake{self.batch_creates}"
            failed = self.batch_fails > 0
            self.batch_fails -= int(failed)
            self.batches[batch_id] = {"id": batch_id, "input_file_id": body["input_file_id"], "endpoint": body.get("endpoint"),
                                      "metadata": body.get("metadata"), "items": items, "polls": 0, "ended": False,
                                      "created_at": int(time.time()), "failed": failed}
        return 200, json.dumps(self._batch_json(self.batches[batch_id])), "application/json"

    def _batch_json(self, b: dict[str, Any]) -> dict[str, Any]:
        items = b["items"]
        done = b["ended"]
        failed = sum(1 for it in items if it["outcome"] != "succeeded")
        if done and b["failed"]:
            return {"id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                    "completion_window": "24h", "status": "failed", "created_at": b["created_at"], "metadata": b["metadata"],
                    "errors": {"object": "list", "data": [{"code": "invalid_request", "line": 1,
                                                           "message": "Injected validation failure of the whole batch"}]},
                    "request_counts": {"total": len(items), "completed": 0, "failed": 0}}
        if done and "output_file_id" not in b:  # write the output and error files once
            ok_lines, err_lines = [], []
            for n, it in enumerate(items):
                if it["outcome"] == "succeeded":
                    ok_lines.append({"id": f"batch_req_{n}", "custom_id": it["custom_id"], "error": None,
                                     "response": {"status_code": 200, "request_id": f"req_{n}", "body": it["body"]}})
                elif it["outcome"] == "expired":
                    err_lines.append({"id": f"batch_req_{n}", "custom_id": it["custom_id"], "response": None,
                                      "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}})
                else:
                    err_lines.append({"id": f"batch_req_{n}", "custom_id": it["custom_id"], "error": None,
                                      "response": {"status_code": 400, "request_id": f"req_{n}",
                                                   "body": {"error": {"message": it["error"],
                                                                      "type": "invalid_request_error", "param": None, "code": None}}}})
            with self._lock:
                for name, rows in (("output_file_id", ok_lines), ("error_file_id", err_lines)):
                    if rows:
                        file_id = f"file-fake{len(self.files) + 1}"
                        self.files[file_id] = ("\n".join(json.dumps(r) for r in rows) + "\n").encode("utf-8")
                        b[name] = file_id
                    else:
                        b[name] = None
        return {"id": b["id"], "object": "batch", "endpoint": b["endpoint"], "input_file_id": b["input_file_id"],
                "completion_window": "24h", "status": "completed" if done else "in_progress", "created_at": b["created_at"],
                "output_file_id": b.get("output_file_id"), "error_file_id": b.get("error_file_id"), "metadata": b["metadata"],
                "request_counts": {"total": len(items), "completed": len(items) - failed if done else 0, "failed": failed if done else 0}}

    def _b_content(self, raw: bytes, headers: dict[str, str], body: Any, file_id: str) -> tuple[int, str, str]:
        content = self.files.get(file_id)
        if content is None:
            return 404, self._error_body(404, f"no file {file_id!r}"), "application/json"
        return 200, content.decode("utf-8"), "application/octet-stream"

    def _error_body(self, status: int, message: str) -> str:
        kind = _OPENAI_ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": None}})


_ANTHROPIC_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
                          429: "rate_limit_error", 529: "overloaded_error"}


class FakeAnthropicServer(_FakeLLMServer):
    """POST /v1/messages; ``base_url`` is what AsyncAnthropic wants. With a forced tool, a JSON responder text
    becomes the tool_use input (non-JSON text comes back as a text block, like a model that ignored the tool)."""

    path = "/v1/messages"

    @property
    def base_url(self) -> str:
        return self.root_url

    def _messages(self, body: dict) -> list[tuple[str, str]]:
        msgs = [("system", _text_of(body["system"]))] if body.get("system") else []
        return msgs + [(m.get("role", ""), _text_of(m.get("content"))) for m in body.get("messages") or []]

    def _ok_body(self, req: LoggedRequest, content: str, n: int) -> dict:
        body = req.body or {}
        choice = body.get("tool_choice") or {}
        block: dict[str, Any] = {"type": "text", "text": content}
        stop = "end_turn"
        if choice.get("type") == "tool":
            try:
                block = {"type": "tool_use", "id": f"toolu_fake{n}", "name": choice.get("name"), "input": json.loads(content)}
                stop = "tool_use"
            except ValueError:
                pass
        n_in, n_out = count_tokens(req.prompt), count_tokens(content)
        return {"id": f"msg_fake{n}", "type": "message", "role": "assistant", "model": body.get("model", self.model),
                "content": [block], "stop_reason": stop, "stop_sequence": None,
                "usage": {"input_tokens": n_in, "output_tokens": n_out}}

    def _emptied(self, ok: dict) -> dict:
        return {**ok, "content": None}

    batch_routes = {"create": ("POST", r"/v1/messages/batches"), "list": ("GET", r"/v1/messages/batches"), "retrieve": ("GET", r"/v1/messages/batches/(?P<batch_id>[\w-]+)"),
                    "results": ("GET", r"/v1/messages/batches/(?P<batch_id>[\w-]+)/results")}

    def _b_create(self, raw: bytes, headers: dict[str, str], body: Any) -> tuple[int, str, str]:
        items = self._batch_items(headers, [(r["custom_id"], r["params"]) for r in (body or {}).get("requests", [])])
        with self._lock:
            self.batch_creates += 1
            batch_id = f"msgbatch_fake{self.batch_creates}"
            self.batches[batch_id] = {"id": batch_id, "items": items, "polls": 0, "ended": False, "created_at": time.time()}
        return 200, json.dumps(self._batch_json(self.batches[batch_id])), "application/json"

    def _batch_json(self, b: dict[str, Any]) -> dict[str, Any]:
        done = b["ended"]
        counts = Counter(it["outcome"] for it in b["items"]) if done else Counter()
        return {"id": b["id"], "type": "message_batch", "processing_status": "ended" if done else "in_progress",
                "created_at": _iso(b["created_at"]), "expires_at": _iso(b["created_at"] + 86400), "ended_at": _iso(time.time()) if done else None,
                "archived_at": None, "cancel_initiated_at": None,
                "results_url": f"{self.root_url}/v1/messages/batches/{b['id']}/results" if done else None,
                "request_counts": {"processing": 0 if done else len(b["items"]), "succeeded": counts["succeeded"],
                                   "errored": counts["errored"], "canceled": counts["canceled"], "expired": counts["expired"]}}

    def _b_results(self, raw: bytes, headers: dict[str, str], body: Any, batch_id: str) -> tuple[int, str, str]:
        b = self.batches.get(batch_id)
        if b is None or not b["ended"]:
            return 400, self._error_body(400, f"batch {batch_id!r} has not ended"), "application/json"
        rows = []
        for it in b["items"]:
            if it["outcome"] == "succeeded":
                result: dict[str, Any] = {"type": "succeeded", "message": it["body"]}
            elif it["outcome"] == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "invalid_request_error", "message": it["error"]}}}
            else:
                result = {"type": it["outcome"]}
            rows.append(json.dumps({"custom_id": it["custom_id"], "result": result}))
        return 200, "\n".join(rows) + "\n", "application/binary"

    def _error_body(self, status: int, message: str) -> str:
        kind = _ANTHROPIC_ERROR_TYPES.get(status, "api_error")
        return json.dumps({"type": "error", "error": {"type": kind, "message": message}})


def main(argv: list[str] | None = None) -> None:
    """Serve until stdin closes: ``python -m tests.llm_servers openai --latency 0.2`` prints the base URL first."""
    import argparse
    import sys

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("api", choices=["openai", "anthropic"])
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args(argv)
    cls = FakeOpenAIServer if args.api == "openai" else FakeAnthropicServer
    with cls(latency_s=args.latency) as srv:
        print(srv.base_url, flush=True)
        sys.stdin.read()


if __name__ == "__main__":
    main()
