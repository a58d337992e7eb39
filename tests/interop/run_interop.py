"""Interop suite: our gateway in front of the real JARVIS stack (PyPI 0.3.8).

Started on free loopback ports (everything stopped at the end, also on failure or a signal):
    idp            tests/interop/idp.py, in this process: discovery, JWKS, token endpoint
    runstore, eventstream, artifactstore   dev-insecure
    coord-open     real coordinator, inbound dev-insecure
    coord-auth     real coordinator, inbound auth required (issuer: idp, audience arp-run-coordinator)
    fake-coord     tests/interop/fake_coordinator.py: streams NDJSON correctly
    gw-open        our gateway, dev-insecure           -> coord-open
    gw-auth        our gateway, auth required          -> coord-auth (token exchange at idp)
    gw-norepair    dev-insecure, events.repair_json_string_body: false -> coord-open
    gw-fake        dev-insecure                        -> fake-coord

Usage: tests/interop/run [-k SUBSTRING] [--keep-logs]   (the entry builds and sets up the venv)
Exit status 0 only when every check passed. Last line: `interop: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack as st  # noqa: E402
from idp import IdP  # noqa: E402
from schemas import Schemas, strip_nulls  # noqa: E402

REPO = st.REPO
RUN_REQUEST = REPO / "examples" / "run.json"
CONFORMANCE = REPO / "tests" / "conformance" / "run_conformance.py"
SEND_REQUEST = REPO / "scripts" / "send-request"
USER = "interop-user"


# -- HTTP ----------------------------------------------------------------------------------
@dataclass
class Resp:
    method: str
    url: str
    status: int
    headers: dict[str, str]
    body: bytes
    line_times: list[float] = field(default_factory=list)  # seconds since the request, per line

    @property
    def ctype(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()

    def json(self) -> Any:
        return json.loads(self.body)

    def show(self) -> str:
        body = self.body.decode("utf-8", "replace")
        if len(body) > 1500:
            body = body[:1500] + "..."
        return f"{self.method} {self.url} -> {self.status} {self.headers.get('content-type', '')}\n{body}"


def call(method: str, url: str, body: Any = None, token: str | None = None, raw: bytes | None = None) -> Resp:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {"Accept": "application/json, application/x-ndjson"}
    data = raw
    if body is not None:
        data = json.dumps(body).encode()
    if data is not None:
        headers["Content-Type"] = "application/json"
    if token:
        headers["Authorization"] = f"Bearer {token}"
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    start = time.monotonic()
    try:
        conn.request(method, target, body=data, headers=headers)
        resp = conn.getresponse()
        chunks, times = [], []
        while True:
            line = resp.readline()
            if not line:
                break
            chunks.append(line)
            times.append(time.monotonic() - start)
        return Resp(method, url, resp.status, {k.lower(): v for k, v in resp.getheaders()}, b"".join(chunks), times)
    finally:
        conn.close()


# -- checks --------------------------------------------------------------------------------
class CheckFailed(Exception):
    pass


class Abort(Exception):
    """A step failed; the rest of its scenario depends on it."""


def expect(cond: Any, msg: str) -> None:
    if not cond:
        raise CheckFailed(msg)


class Suite:
    def __init__(self, schemas: Schemas, only: str | None) -> None:
        self.schemas = schemas
        self.only = only
        self.passed: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self.nulls: dict[str, dict[str, int]] = {}

    @contextmanager
    def step(self, name: str, fatal: bool = True) -> Iterator[None]:
        """One check. A failure is recorded; when `fatal`, the rest of the scenario (which
        depends on this step) is skipped, else the scenario goes on with its next step."""
        t0 = time.monotonic()
        try:
            yield
        except CheckFailed as exc:
            self._fail(name, str(exc), t0)
            if fatal:
                raise Abort(name) from exc
        except Abort:
            raise
        except Exception as exc:  # noqa: BLE001 - reported, then the scenario stops
            self._fail(name, f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}", t0)
            if fatal:
                raise Abort(name) from exc
        else:
            self.passed.append(name)
            print(f"  ok    {name} ({time.monotonic() - t0:.2f}s)", flush=True)

    def _fail(self, name: str, detail: str, t0: float) -> None:
        self.failed.append((name, detail))
        print(f"  FAIL  {name} ({time.monotonic() - t0:.2f}s)\n" + _indent(detail), flush=True)

    def scenario(self, title: str, fn: Callable[[], None]) -> None:
        if self.only and self.only not in title:
            return
        print(f"\n== {title}", flush=True)
        try:
            fn()
        except Abort as exc:
            print(f"  (rest of '{title}' skipped after '{exc}')", flush=True)

    # Schema checks. `nulls_from` names the upstream whose bodies may carry nulls (the real
    # coordinator's): they are counted and stripped before validation, since the gateway relays
    # coordinator bodies unchanged. Bodies the gateway produces itself are validated as they are.
    def valid(self, schema: str, instance: Any, resp: Resp, nulls_from: str | None = None) -> Any:
        if nulls_from:
            instance, dropped = strip_nulls(instance)
            bucket = self.nulls.setdefault(f"{nulls_from} {schema}", {})
            for path in dropped:
                key = _generic_path(path)
                bucket[key] = bucket.get(key, 0) + 1
        errors = self.schemas.errors(schema, instance)
        expect(not errors, f"{schema} schema violations: {errors}\n{resp.show()}")
        return instance


def _generic_path(path: str) -> str:
    return "/".join("*" if p.isdigit() else p for p in path.split("/"))


def _indent(text: str) -> str:
    return "\n".join("        " + line for line in text.rstrip().splitlines())


# -- shared step bodies --------------------------------------------------------------------
def expect_status(resp: Resp, status: int, ctype: str | None = "application/json") -> None:
    expect(resp.status == status, f"expected HTTP {status}, got:\n{resp.show()}")
    if ctype:
        expect(resp.ctype == ctype, f"expected Content-Type {ctype}, got:\n{resp.show()}")


def check_events(suite: Suite, resp: Resp, run_id: str, nulls_from: str | None) -> list[dict[str, Any]]:
    expect_status(resp, 200, "application/x-ndjson")
    text = resp.body.decode("utf-8")
    expect(text.endswith("\n"), f"NDJSON must end with a newline:\n{resp.show()}")
    events = []
    for n, line in enumerate(text.splitlines(), 1):
        expect(line.strip(), f"blank line {n} in the stream:\n{resp.show()}")
        try:
            event = json.loads(line)
        except ValueError as exc:
            raise CheckFailed(f"line {n} is not JSON ({exc}): {line[:200]!r}\n{resp.show()}") from exc
        expect(isinstance(event, dict), f"line {n} is not a JSON object: {line[:200]!r}")
        suite.valid("RunEvent", event, resp, nulls_from)
        expect(event["run_id"] == run_id, f"line {n}: event of run {event['run_id']}, wanted {run_id}")
        events.append(event)
    seqs = [e["seq"] for e in events]
    expect(seqs == sorted(seqs) and len(set(seqs)) == len(seqs), f"seq not strictly increasing: {seqs}")
    return events


def run_lifecycle(suite: Suite, gw: str, label: str, token: str | None, nulls_from: str | None) -> dict[str, Any]:
    """Start from examples/run.json, fetch, read events, cancel, fetch, read events again."""
    request = json.loads(RUN_REQUEST.read_text(encoding="utf-8"))
    state: dict[str, Any] = {}
    with suite.step(f"{label}: start run from examples/run.json"):
        r = call("POST", f"{gw}/v1/runs", request, token)
        expect_status(r, 200)
        run = suite.valid("Run", r.json(), r, nulls_from)
        expect(run["state"] in ("queued", "running"), f"fresh run in state {run['state']}\n{r.show()}")
        state["run"] = run
    run_id = state["run"]["run_id"]
    with suite.step(f"{label}: get run"):
        r = call("GET", f"{gw}/v1/runs/{run_id}", token=token)
        expect_status(r, 200)
        run = suite.valid("Run", r.json(), r, nulls_from)
        expect(run["run_id"] == run_id and run["root_node_run_id"] == state["run"]["root_node_run_id"], r.show())
        expect(run["state"] == "running", f"run should still be running (no executor, no dispatch):\n{r.show()}")
    with suite.step(f"{label}: event stream (application/x-ndjson, RunEvent lines)"):
        r = call("GET", f"{gw}/v1/runs/{run_id}/events", token=token)
        events = check_events(suite, r, run_id, nulls_from)
        types = [e["type"] for e in events]
        expect(types[:1] == ["run_started"] and "node_run_assigned" in types, f"unexpected event types {types}")
        state["events_before"] = r
    with suite.step(f"{label}: cancel run"):
        r = call("POST", f"{gw}/v1/runs/{run_id}:cancel", token=token)
        expect_status(r, 200)
        run = suite.valid("Run", r.json(), r, nulls_from)
        expect(run["state"] == "canceled" and run.get("ended_at"), f"not canceled:\n{r.show()}")
    with suite.step(f"{label}: get run after cancel"):
        r = call("GET", f"{gw}/v1/runs/{run_id}", token=token)
        expect_status(r, 200)
        expect(suite.valid("Run", r.json(), r, nulls_from)["state"] == "canceled", r.show())
    with suite.step(f"{label}: event stream after cancel ends with run_completed"):
        r = call("GET", f"{gw}/v1/runs/{run_id}/events", token=token)
        events = check_events(suite, r, run_id, nulls_from)
        last = events[-1]
        expect(last["type"] == "run_completed" and last.get("data", {}).get("state") == "canceled", r.show())
        state["events_after"] = r
    return state


def conformance(suite: Suite, label: str, gw: str, tier: str, token: str | None = None) -> None:
    with suite.step(f"{label}: arp-conformance {tier} --strict", fatal=False):
        argv = [sys.executable, str(CONFORMANCE), "check", "run-gateway", "--tier", tier, "--strict", "--url", gw]
        if token:
            argv += ["--headers", f"Authorization=Bearer {token}"]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=180, cwd=REPO)
        out = (proc.stdout + proc.stderr).strip()
        shown = " ".join(a if not a.startswith("Authorization=") else "Authorization=Bearer ***" for a in argv[1:])
        expect(proc.returncode == 0, f"exit {proc.returncode}: python {shown}\n{out}")


def send_request(suite: Suite, label: str, gw: str, token: str | None) -> None:
    with suite.step(f"{label}: scripts/send-request starts a run and fetches it back", fatal=False):
        port = urllib.parse.urlsplit(gw).port
        argv = [sys.executable, str(SEND_REQUEST), "--port", str(port), "--request", str(RUN_REQUEST)]
        if token:
            argv += ["--token", token]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        expect(proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}{proc.stderr}")
        out = json.loads(proc.stdout)
        expect(out["run"]["run_id"] == out["fetched"]["run_id"], proc.stdout)


# -- scenarios -----------------------------------------------------------------------------
class Interop:
    def __init__(self, suite: Suite, stack: st.Stack, idp: IdP) -> None:
        self.suite = suite
        self.stack = stack
        self.idp = idp
        self.p: dict[str, st.Proc] = {}

    def start(self) -> None:
        s = self.stack
        stores = s.start_stores()
        self.p.update(stores)
        s.wait_healthy(list(stores.values()))
        self.p["coord-open"] = s.start_coordinator("coord-open", stores, self.idp.token_endpoint)
        self.p["coord-auth"] = s.start_coordinator(
            "coord-auth", stores, self.idp.token_endpoint, auth_issuer=self.idp.issuer
        )
        fake_port = st.free_port()
        self.p["fake-coord"] = s.spawn(
            "fake-coord",
            [sys.executable, str(Path(__file__).with_name("fake_coordinator.py")), "--port", str(fake_port)],
            st.clean_env(),
            f"http://127.0.0.1:{fake_port}",
        )
        s.wait_healthy([self.p["coord-open"], self.p["coord-auth"], self.p["fake-coord"]])

        binary = st.gateway_binary()
        if not binary.exists():
            raise RuntimeError(f"gateway binary missing: {binary} (tests/interop/run builds it)")
        open_env = {"ARP_AUTH_PROFILE": "dev-insecure"}
        self.p["gw-open"] = s.start_gateway("gw-open", binary, self.p["coord-open"].url, env_extra=open_env)
        self.p["gw-auth"] = s.start_gateway(
            "gw-auth",
            binary,
            self.p["coord-auth"].url,
            env_extra={
                "ARP_AUTH_MODE": "required",
                "ARP_AUTH_ISSUER": self.idp.issuer,  # keys via discovery, STS at the default path
                "ARP_AUTH_AUDIENCE": st.GATEWAY_AUDIENCE,
                "ARP_AUTH_CLIENT_ID": st.GATEWAY_CLIENT_ID,
                "ARP_AUTH_CLIENT_SECRET": st.GATEWAY_CLIENT_SECRET,
            },
        )
        self.p["gw-norepair"] = s.start_gateway(
            "gw-norepair",
            binary,
            self.p["coord-open"].url,
            env_extra=open_env,
            yaml_extra="events:\n  repair_json_string_body: false\n",
        )
        self.p["gw-fake"] = s.start_gateway("gw-fake", binary, self.p["fake-coord"].url, env_extra=open_env)
        s.wait_healthy([self.p[n] for n in ("gw-open", "gw-auth", "gw-norepair", "gw-fake")], path="/v1/version")

    def url(self, name: str) -> str:
        return self.p[name].url

    # dev-insecure gateway, real coordinator --------------------------------------------
    def dev_insecure(self) -> None:
        s, gw = self.suite, self.url("gw-open")
        with s.step("dev-insecure: GET /v1/health is a valid Health, coordinator ok", fatal=False):
            r = call("GET", f"{gw}/v1/health")
            expect_status(r, 200)
            health = s.valid("Health", r.json(), r)
            check = next((c for c in health.get("checks", []) if c["name"] == "run_coordinator"), None)
            expect(health["status"] == "ok" and check and check["status"] == "ok", r.show())
        with s.step("dev-insecure: GET /v1/version is a valid VersionInfo", fatal=False):
            r = call("GET", f"{gw}/v1/version")
            expect_status(r, 200)
            expect(s.valid("VersionInfo", r.json(), r)["service_name"] == "arp-jarvis-rungateway", r.show())
        conformance(s, "dev-insecure", gw, "smoke")
        conformance(s, "dev-insecure", gw, "surface")
        with s.step("dev-insecure: examples/run.json is a valid RunStartRequest", fatal=False):
            errors = s.schemas.errors("RunStartRequest", json.loads(RUN_REQUEST.read_text(encoding="utf-8")))
            expect(not errors, f"examples/run.json: {errors}")
        state = run_lifecycle(s, gw, "dev-insecure", None, nulls_from="coordinator 0.3.8")
        run_id = state["run"]["run_id"]
        with s.step("dev-insecure: repaired events are byte for byte the event-stream service's NDJSON", fatal=False):
            direct_es = call("GET", f"{self.url('eventstream')}/v1/runs/{run_id}/events")
            expect_status(direct_es, 200, "application/x-ndjson")
            direct_co = call("GET", f"{self.url('coord-open')}/v1/runs/{run_id}/events")
            expect(
                direct_co.status == 200 and direct_co.ctype == "application/json" and isinstance(direct_co.json(), str),
                f"the coordinator no longer shows the defect the gateway repairs:\n{direct_co.show()}",
            )
            via_gw = state["events_after"]
            expect(via_gw.body == direct_es.body, f"gateway:\n{via_gw.show()}\nevent stream:\n{direct_es.show()}")
            expect(direct_co.json() == direct_es.body.decode(), "coordinator's JSON string != event-stream text")
        with s.step("dev-insecure: unknown run: the coordinator's 404 envelope passes through", fatal=False):
            r = call("GET", f"{gw}/v1/runs/run_does_not_exist")
            expect_status(r, 404)
            env = s.valid("ErrorEnvelope", r.json(), r, nulls_from="coordinator 0.3.8")
            expect(env["error"]["code"] == "run_not_found", r.show())
            direct = call("GET", f"{self.url('coord-open')}/v1/runs/run_does_not_exist")
            expect(direct.body == r.body, f"changed on the way:\ncoordinator:\n{direct.show()}\ngateway:\n{r.show()}")
        with s.step("dev-insecure: invalid start body -> 400 invalid_request, valid envelope as is", fatal=False):
            r = call("POST", f"{gw}/v1/runs", {"input": {}})
            expect_status(r, 400)
            env = s.valid("ErrorEnvelope", r.json(), r)
            expect(env["error"]["code"] == "invalid_request" and env["error"].get("details", {}).get("errors"), r.show())
        with s.step("dev-insecure: coordinator-internal paths are not exposed", fatal=False):
            for method, path in (("GET", "/v1/node-runs/x"), ("POST", "/v1/node-runs"), ("GET", "/v1/node-runs/x/events")):
                r = call(method, f"{gw}{path}", raw=b"{}" if method == "POST" else None)
                expect(r.status in (404, 405), f"expected 404/405, got:\n{r.show()}")
                expect(r.ctype == "application/json", r.show())
                s.valid("ErrorEnvelope", r.json(), r)
        with s.step("dev-insecure: no outbound token requested by the gateway", fatal=False):
            mine = [q for q in self.idp.requests() if q["client_id"] == st.GATEWAY_CLIENT_ID]
            expect(not mine, f"gateway asked the STS in dev-insecure: {mine}")
        send_request(s, "dev-insecure", gw, None)

    # auth required, real coordinator that checks the exchanged token --------------------
    def auth_required(self) -> None:
        s, gw = self.suite, self.url("gw-auth")
        user = self.idp.user_token(USER, st.GATEWAY_AUDIENCE)
        with s.step("auth: the coordinator itself requires a token (401 without)", fatal=False):
            r = call("GET", f"{self.url('coord-auth')}/v1/runs/run_x")
            expect(r.status == 401, f"coord-auth does not enforce auth:\n{r.show()}")
        with s.step("auth: /v1/health and /v1/version need no token", fatal=False):
            for path, schema in (("/v1/health", "Health"), ("/v1/version", "VersionInfo")):
                r = call("GET", f"{gw}{path}")
                expect_status(r, 200)
                s.valid(schema, r.json(), r)
        with s.step("auth: no token -> 401 unauthorized with WWW-Authenticate", fatal=False):
            r = call("POST", f"{gw}/v1/runs", json.loads(RUN_REQUEST.read_text(encoding="utf-8")))
            expect_status(r, 401)
            env = s.valid("ErrorEnvelope", r.json(), r)
            expect(env["error"]["code"] == "unauthorized", r.show())
            expect(r.headers.get("www-authenticate", "").lower().startswith("bearer"), f"no challenge:\n{r.show()}")
        with s.step("auth: token for another audience -> 401 Invalid token audience", fatal=False):
            other = self.idp.user_token(USER, "some-other-service")
            r = call("GET", f"{gw}/v1/runs/run_x", token=other)
            expect_status(r, 401)
            env = s.valid("ErrorEnvelope", r.json(), r)
            expect(env["error"]["message"] == "Invalid token audience", r.show())
        before = len(self.idp.requests())
        state = run_lifecycle(s, gw, "auth", user, nulls_from="coordinator 0.3.8")
        with s.step("auth: inbound token exchanged (RFC 8693) for the coordinator's audience"):
            reqs = [q for q in self.idp.requests()[before:] if q["client_id"] == st.GATEWAY_CLIENT_ID]
            exchanges = [q for q in reqs if q["grant_type"] == "urn:ietf:params:oauth:grant-type:token-exchange"]
            expect(exchanges, f"no token exchange seen; gateway STS requests: {reqs}")
            for q in exchanges:
                expect(q["status"] == 200, f"exchange failed at the IdP: {q}")
                expect(q["audience"] == st.COORDINATOR_AUDIENCE, f"audience {q['audience']!r}: {q}")
                expect(q["subject_sub"] == USER and q["issued_sub"] == USER, f"subject not carried: {q}")
                expect(
                    {"subject_token", "subject_token_type", "requested_token_type", "client_id", "client_secret"}
                    <= set(q["fields"]),
                    f"form fields: {q['fields']}",
                )
            other = [q for q in reqs if q not in exchanges]
            expect(not other, f"unexpected STS requests: {other}")
        with s.step("auth: exchanged token cached (one exchange for the whole run)", fatal=False):
            calls = 6  # start, get, events, cancel, get, events
            expect(len(exchanges) == 1, f"{len(exchanges)} exchanges for {calls} requests with one inbound token")
        conformance(s, "auth", gw, "smoke", user)
        conformance(s, "auth", gw, "surface", user)
        send_request(s, "auth", gw, user)
        _ = state

    # repair off ---------------------------------------------------------------------------
    def repair_off(self) -> None:
        s, gw = self.suite, self.url("gw-norepair")
        run_id: dict[str, str] = {}
        with s.step("repair off: start a run"):
            r = call("POST", f"{gw}/v1/runs", json.loads(RUN_REQUEST.read_text(encoding="utf-8")))
            expect_status(r, 200)
            run_id["id"] = s.valid("Run", r.json(), r, nulls_from="coordinator 0.3.8")["run_id"]
        with s.step("repair off (events.repair_json_string_body: false): JSON string relayed unchanged"):
            r = call("GET", f"{gw}/v1/runs/{run_id['id']}/events")
            expect_status(r, 200, "application/json")
            direct = call("GET", f"{self.url('coord-open')}/v1/runs/{run_id['id']}/events")
            expect(r.body == direct.body, f"gateway:\n{r.show()}\ncoordinator:\n{direct.show()}")
            expect(isinstance(r.json(), str), r.show())

    # test coordinator that streams correctly -------------------------------------------
    def correct_stream(self) -> None:
        s, gw = self.suite, self.url("gw-fake")
        ids: dict[str, str] = {}
        with s.step("test coordinator: start, get, cancel (valid as they are)"):
            r = call("POST", f"{gw}/v1/runs", json.loads(RUN_REQUEST.read_text(encoding="utf-8")))
            expect_status(r, 200)
            ids["run"] = s.valid("Run", r.json(), r)["run_id"]
            r = call("GET", f"{gw}/v1/runs/{ids['run']}")
            expect_status(r, 200)
            s.valid("Run", r.json(), r)
            r = call("POST", f"{gw}/v1/runs/{ids['run']}:cancel")
            expect_status(r, 200)
            expect(s.valid("Run", r.json(), r)["state"] == "canceled", r.show())
        with s.step("test coordinator: NDJSON relayed byte for byte, line by line as it arrives"):
            r = call("GET", f"{gw}/v1/runs/{ids['run']}/events")
            events = check_events(s, r, ids["run"], None)
            direct = call("GET", f"{self.url('fake-coord')}/v1/runs/{ids['run']}/events")
            expect(len(events) == 3, r.show())
            # Event times differ between the two fetches; compare the shapes.
            strip = [{k: v for k, v in json.loads(x).items() if k != "time"} for x in r.body.splitlines()]
            strip_direct = [{k: v for k, v in json.loads(x).items() if k != "time"} for x in direct.body.splitlines()]
            expect(strip == strip_direct, f"gateway:\n{r.show()}\ncoordinator:\n{direct.show()}")
            t = r.line_times
            spread = t[-1] - t[0]
            expect(spread >= 0.5, f"lines arrived together (first {t[0]:.2f}s, last {t[-1]:.2f}s): buffered, not relayed")
        for run_id, status, ctype in (
            ("json-object", 200, "application/json"),
            ("error-string", 500, "application/json"),
            ("ndjson-string", 200, "application/x-ndjson"),
        ):
            with s.step(f"test coordinator: events '{run_id}' ({status} {ctype}) relayed unchanged", fatal=False):
                r = call("GET", f"{gw}/v1/runs/{run_id}/events")
                direct = call("GET", f"{self.url('fake-coord')}/v1/runs/{run_id}/events")
                expect_status(r, status, ctype)
                expect(r.body == direct.body, f"gateway:\n{r.show()}\ncoordinator:\n{direct.show()}")
        with s.step("test coordinator: a JSON string on GET /v1/runs/{id} is not repaired", fatal=False):
            r = call("GET", f"{gw}/v1/runs/json-string")
            expect_status(r, 200)
            expect(r.body == b'"just a string"', r.show())

    def teardown_check(self) -> None:
        with self.suite.step("everything started exits when stopped"):
            procs = list(self.stack.procs)
            self.stack.stop()
            alive = [p.name for p in procs if p.popen.poll() is None]
            expect(not alive, f"still running: {alive}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-k", dest="only", help="run only scenarios whose title contains this")
    parser.add_argument("--keep-logs", action="store_true", help="keep the log directory even when all passed")
    args = parser.parse_args()
    st.install_signal_handlers()

    t0 = time.monotonic()
    workdir = Path(tempfile.mkdtemp(prefix="arp-interop-"))
    schemas = Schemas()
    suite = Suite(schemas, args.only)
    print(f"interop: spec schemas {schemas.root}\ninterop: logs in {workdir}", flush=True)
    stack = st.Stack(workdir)
    idp = IdP(
        {st.COORDINATOR_CLIENT_ID: st.COORDINATOR_CLIENT_SECRET, st.GATEWAY_CLIENT_ID: st.GATEWAY_CLIENT_SECRET}
    ).start()
    interop = Interop(suite, stack, idp)
    try:
        print("\n== starting the stack", flush=True)
        try:
            with suite.step("start IdP, JARVIS 0.3.8 stores and coordinators, test coordinator, 4 gateways"):
                interop.start()
        except Abort:
            pass
        else:
            suite.scenario("dev-insecure gateway -> real coordinator 0.3.8", interop.dev_insecure)
            suite.scenario("auth-required gateway -> real coordinator 0.3.8 (auth required)", interop.auth_required)
            suite.scenario("events repair off -> real coordinator 0.3.8", interop.repair_off)
            suite.scenario("test coordinator streaming NDJSON correctly", interop.correct_stream)
            suite.scenario("teardown", interop.teardown_check)
    except KeyboardInterrupt:
        suite.failed.append(("interrupted", "SIGINT"))
    except SystemExit as exc:
        suite.failed.append(("interrupted", f"signal (exit {exc.code})"))
    finally:
        stack.stop()
        idp.stop()

    if suite.nulls:
        print("\nnulls in bodies relayed unchanged from the coordinator (stripped before validation):")
        for where, paths in sorted(suite.nulls.items()):
            if not paths:
                continue
            print(f"  {where}: " + ", ".join(f"{p} x{n}" for p, n in sorted(paths.items())))
    if suite.failed:
        print("\nfailed:")
        for name, _ in suite.failed:
            print(f"  - {name}")
        print(f"logs kept in {workdir}")
    elif args.keep_logs:
        print(f"\nlogs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\ninterop: {len(suite.passed)} passed, {len(suite.failed)} failed ({time.monotonic() - t0:.1f}s)",
        flush=True,
    )
    return 1 if suite.failed else 0


if __name__ == "__main__":
    sys.exit(main())
