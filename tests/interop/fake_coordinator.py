"""A test Run Coordinator that streams run events correctly (`application/x-ndjson`, chunked, one
event per chunk, with pauses between them), plus a few odd answers the gateway must relay
untouched. It is the counterpart of the real 0.3.8 coordinator, whose events route answers one
JSON string; the gateway must repair that case and nothing else.

Special run ids on GET /v1/runs/{id}/events:
    json-object    200 application/json, a JSON object            (relayed as it came)
    error-string   500 application/json, a JSON string            (relayed as it came)
    ndjson-string  200 application/x-ndjson, a line that is a JSON string (relayed as it came)
    anything else  200 application/x-ndjson, EVENT_COUNT events, EVENT_GAP seconds apart
And GET /v1/runs/json-string: 200 application/json, a JSON string (not the events route).

Run standalone: python fake_coordinator.py --port N
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import urllib.parse
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

EVENT_COUNT = 3
EVENT_GAP = 0.4

ODD_EVENTS = {
    "json-object": (200, "application/json", b'{"note": "an object, not a string"}'),
    "error-string": (500, "application/json", b'"coordinator exploded"'),
    "ndjson-string": (200, "application/x-ndjson", b'"{\\"seq\\":1}\\n"\n'),
}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


class FakeCoordinator:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer((host, port), self._handler())
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_address[1]}"

    def event_lines(self, run_id: str) -> list[bytes]:
        run = self.runs.get(run_id, {"root_node_run_id": "node_run_fake"})
        events = [
            {"run_id": run_id, "seq": 1, "type": "run_started", "time": _now(), "data": {"root_node_run_id": run["root_node_run_id"]}},
            {"run_id": run_id, "node_run_id": run["root_node_run_id"], "seq": 2, "type": "node_run_assigned", "time": _now(), "data": {"root": True}},
            {"run_id": run_id, "seq": 3, "type": "run_completed", "time": _now(), "data": {"state": "succeeded"}},
        ][:EVENT_COUNT]
        return [json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in events]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _json(self, status: int, obj: Any) -> None:
                self._send(status, json.dumps(obj).encode())

            def _not_found(self, what: str) -> None:
                self._json(404, {"error": {"code": "run_not_found", "message": f"Run '{what}' not found"}})

            def do_GET(self) -> None:  # noqa: N802
                path = urllib.parse.urlsplit(self.path).path
                if path == "/v1/health":
                    return self._json(200, {"status": "ok", "time": _now()})
                if path == "/v1/version":
                    return self._json(
                        200, {"service_name": "fake-coordinator", "service_version": "0", "supported_api_versions": ["v1"]}
                    )
                parts = path.split("/")
                if len(parts) == 5 and parts[1:3] == ["v1", "runs"] and parts[4] == "events":
                    return self._events(urllib.parse.unquote(parts[3]))
                if len(parts) == 4 and parts[1:3] == ["v1", "runs"]:
                    run_id = urllib.parse.unquote(parts[3])
                    if run_id == "json-string":
                        return self._send(200, b'"just a string"')
                    with fake.lock:
                        run = fake.runs.get(run_id)
                    return self._json(200, run) if run else self._not_found(run_id)
                self._json(404, {"error": {"code": "not_found", "message": "no such path"}})

            def do_POST(self) -> None:  # noqa: N802
                path = urllib.parse.urlsplit(self.path).path
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                if path == "/v1/runs":
                    body = json.loads(raw or b"{}")
                    run_id = body.get("run_id") or f"run_{uuid.uuid4().hex}"
                    run = {"run_id": run_id, "state": "running", "root_node_run_id": f"node_run_{uuid.uuid4().hex}", "started_at": _now()}
                    with fake.lock:
                        fake.runs[run_id] = run
                    return self._json(200, run)
                if path.startswith("/v1/runs/") and path.endswith(":cancel"):
                    run_id = urllib.parse.unquote(path[len("/v1/runs/") : -len(":cancel")])
                    with fake.lock:
                        run = fake.runs.get(run_id)
                        if run:
                            run.update(state="canceled", ended_at=_now())
                    return self._json(200, run) if run else self._not_found(run_id)
                self._json(404, {"error": {"code": "not_found", "message": "no such path"}})

            def _events(self, run_id: str) -> None:
                if run_id in ODD_EVENTS:
                    status, ctype, body = ODD_EVENTS[run_id]
                    return self._send(status, body, ctype)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                lines = fake.event_lines(run_id)
                for i, line in enumerate(lines):
                    if i:
                        time.sleep(EVENT_GAP)
                    self.wfile.write(f"{len(line):x}\r\n".encode() + line + b"\r\n")
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test Run Coordinator with a correct NDJSON event stream.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    fake = FakeCoordinator(args.host, args.port)
    print(f"FAKE_COORDINATOR_URL={fake.url}", flush=True)
    try:
        fake.server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
