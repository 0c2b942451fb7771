"""Fake GCE and AWS metadata servers on 127.0.0.1, for the notice tests.

They behave like the real services where it matters: GCE answers 403 to
requests without `Metadata-Flavor: Google` and tags its answers with the same
header; AWS IMDSv2 answers 401 without a valid session token and 404 when no
spot interruption is scheduled.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WAIT_SECONDS = 5.0
GCE_PREFIX = "/computeMetadata/v1/instance/"
AWS_TOKEN_PATH = "/latest/api/token"
AWS_ACTION_PATH = "/latest/meta-data/spot/instance-action"


@dataclass
class GceState:
    preempted: str = "FALSE"
    maintenance_event: str = "NONE"
    forced_status: int | None = None  # answer every request with this status
    forced_body: str | None = None  # answer 200 with this body instead
    send_flavor_header: bool = True
    slow: bool = False  # hold every request until the test ends
    release: threading.Event = field(default_factory=threading.Event)
    # (path, Metadata-Flavor header as received)
    requests: list[tuple[str, str | None]] = field(default_factory=list)


@dataclass
class AwsState:
    instance_action: dict[str, str] | None = None
    forced_status: int | None = None  # for instance-action requests
    forced_body: str | None = None
    slow: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    tokens: dict[str, float] = field(default_factory=dict)  # token -> monotonic expiry
    token_ttl_headers: list[str | None] = field(default_factory=list)  # one per PUT
    action_requests: int = 0
    unauthorized_answers: int = 0


class FakeServer(ThreadingHTTPServer):
    def __init__(self, handler: type[BaseHTTPRequestHandler], state: GceState | AwsState) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.state = state

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_port}"

    def handle_error(self, request: object, client_address: object) -> None:
        # A client that gave up (timeout tests) leaves a broken pipe behind.
        pass


class QuietHandler(BaseHTTPRequestHandler):
    server: FakeServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def answer(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class GceHandler(QuietHandler):
    def do_GET(self) -> None:
        state = self.server.state
        assert isinstance(state, GceState)
        flavor = self.headers.get("Metadata-Flavor")
        state.requests.append((self.path, flavor))
        if state.slow:
            state.release.wait(WAIT_SECONDS)
        headers = {"Metadata-Flavor": "Google"} if state.send_flavor_header else {}
        if flavor != "Google":
            self.answer(403, "Missing Metadata-Flavor:Google header.", headers)
        elif state.forced_status is not None:
            self.answer(state.forced_status, "internal error", headers)
        elif state.forced_body is not None:
            self.answer(200, state.forced_body, headers)
        elif self.path == GCE_PREFIX + "preempted":
            self.answer(200, state.preempted, headers)
        elif self.path == GCE_PREFIX + "maintenance-event":
            self.answer(200, state.maintenance_event, headers)
        else:
            self.answer(404, "not found", headers)


class AwsHandler(QuietHandler):
    def do_PUT(self) -> None:
        state = self.server.state
        assert isinstance(state, AwsState)
        ttl_header = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds")
        state.token_ttl_headers.append(ttl_header)
        if state.slow:
            state.release.wait(WAIT_SECONDS)
        if self.path != AWS_TOKEN_PATH:
            self.answer(403, "forbidden")
            return
        if ttl_header is None or not ttl_header.isdigit() or not 1 <= int(ttl_header) <= 21600:
            self.answer(400, "bad ttl")
            return
        token = secrets.token_urlsafe(24)
        state.tokens[token] = time.monotonic() + int(ttl_header)
        self.answer(200, token, {"X-aws-ec2-metadata-token-ttl-seconds": ttl_header})

    def do_GET(self) -> None:
        state = self.server.state
        assert isinstance(state, AwsState)
        if state.slow:
            state.release.wait(WAIT_SECONDS)
        token = self.headers.get("X-aws-ec2-metadata-token")
        expiry = state.tokens.get(token or "")
        if expiry is None or expiry < time.monotonic():
            # IMDSv2 with HttpTokens=required: no valid token, no answer.
            state.unauthorized_answers += 1
            self.answer(401, "Unauthorized")
            return
        if self.path != AWS_ACTION_PATH:
            self.answer(404, "Not Found")
            return
        state.action_requests += 1
        if state.forced_status is not None:
            self.answer(state.forced_status, "Internal Server Error")
        elif state.forced_body is not None:
            self.answer(200, state.forced_body)
        elif state.instance_action is None:
            self.answer(404, "<html><body><h1>404 - Not Found</h1></body></html>")
        else:
            self.answer(200, json.dumps(state.instance_action))


def serve(
    handler: type[BaseHTTPRequestHandler], state: GceState | AwsState
) -> Iterator[FakeServer]:
    server = FakeServer(handler, state)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield server
    finally:
        state.release.set()  # let held (slow) requests finish
        server.shutdown()
        server.server_close()
        thread.join(WAIT_SECONDS)
