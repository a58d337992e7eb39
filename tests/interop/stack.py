"""Starts and stops the real JARVIS stack (PyPI, 0.3.8) and our gateway on loopback ports.

Used by run_interop.py (CI) and demo.py (scripts/demo). Every process runs in its own process
group; `Stack.stop()` ends each group (SIGTERM, then SIGKILL after a few seconds) and is safe to
call more than once, from `finally`, a signal handler or atexit.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

COORDINATOR_CLIENT_ID = "arp-jarvis-run-coordinator"
COORDINATOR_CLIENT_SECRET = "interop-coordinator-secret"
GATEWAY_CLIENT_ID = "arp-run-gateway"
GATEWAY_CLIENT_SECRET = "interop-gateway-secret"
GATEWAY_AUDIENCE = "arp-run-gateway"
COORDINATOR_AUDIENCE = "arp-run-coordinator"

# Variables that would change how a service behaves; none is inherited from the caller.
_SCRUB_PREFIXES = ("ARP_", "JARVIS_", "RUST_LOG")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    env.update({k: v for k, v in extra.items() if v is not None})
    return env


def free_port(preferred: int | None = None) -> int:
    """`preferred` when it is free on 127.0.0.1, else any free port."""
    if preferred:
        with socket.socket() as s:
            # As the servers do: connections of a previous run in TIME_WAIT do not make it busy.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", preferred))
                return preferred
            except OSError:
                pass
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Accept": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log_path: Path
    url: str

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@dataclass
class Stack:
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    # -- processes -----------------------------------------------------------------------
    def spawn(self, name: str, argv: list[str], env: dict[str, str], url: str, cwd: Path | None = None) -> Proc:
        log_path = self.workdir / f"{name}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - owned by the child from here on
        popen = subprocess.Popen(
            argv,
            env=env,
            cwd=str(cwd or self.workdir),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: killpg reaches its children too
        )
        log.close()
        proc = Proc(name, popen, log_path, url)
        self.procs.append(proc)
        return proc

    def wait_healthy(self, procs: list[Proc], timeout: float = 30.0, path: str = "/v1/health") -> None:
        deadline = time.monotonic() + timeout
        pending = list(procs)
        while pending:
            for proc in list(pending):
                if proc.popen.poll() is not None:
                    raise RuntimeError(
                        f"{proc.name} exited with code {proc.popen.returncode} during startup; log:\n{proc.log_tail()}"
                    )
                try:
                    status, _ = http_get(proc.url + path, timeout=1.0)
                except (OSError, urllib.error.URLError):
                    continue
                if status == 200:
                    pending.remove(proc)
            if not pending:
                return
            if time.monotonic() > deadline:
                names = ", ".join(p.name for p in pending)
                tails = "\n".join(f"--- {p.name}\n{p.log_tail()}" for p in pending)
                raise RuntimeError(f"not healthy after {timeout:.0f}s: {names}\n{tails}")
            time.sleep(0.1)

    def stop(self) -> None:
        # A second Ctrl-C or SIGTERM must not cut the cleanup short: hold them until it is done.
        blocked = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        old = signal.pthread_sigmask(signal.SIG_BLOCK, blocked)
        try:
            self._stop()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)

    def _stop(self) -> None:
        procs, self.procs = self.procs, []
        for proc in procs:
            _signal_group(proc.popen, signal.SIGTERM)
        deadline = time.monotonic() + 5.0
        for proc in procs:
            remaining = max(0.0, deadline - time.monotonic())
            try:
                proc.popen.wait(timeout=remaining)
            except subprocess.TimeoutExpired:
                _signal_group(proc.popen, signal.SIGKILL)
            try:
                proc.popen.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                print(f"warning: {proc.name} (pid {proc.popen.pid}) did not exit", file=sys.stderr)

    # -- the JARVIS services -------------------------------------------------------------
    def start_stores(self, ports: dict[str, int] | None = None) -> dict[str, Proc]:
        ports = ports or {}
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        env = clean_env(ARP_AUTH_PROFILE="dev-insecure")
        specs = {
            "runstore": ("arp-jarvis-runstore", {"JARVIS_RUN_STORE_DB_URL": f"sqlite:///{data}/run_store.sqlite"}),
            "eventstream": (
                "arp-jarvis-eventstream",
                {"JARVIS_EVENT_STORE_DB_URL": f"sqlite:///{data}/event_store.sqlite"},
            ),
            "artifactstore": ("arp-jarvis-artifactstore", {"JARVIS_ARTIFACT_DIR": str(data / "artifacts")}),
        }
        out = {}
        for name, (exe, extra) in specs.items():
            port = ports.get(name) or free_port()
            url = f"http://127.0.0.1:{port}"
            out[name] = self.spawn(
                name,
                [str(VENV_BIN / exe), "--host", "127.0.0.1", "--port", str(port)],
                {**env, **extra},
                url,
            )
        return out

    def start_coordinator(
        self,
        name: str,
        stores: dict[str, Proc],
        token_endpoint: str,
        *,
        port: int | None = None,
        auth_issuer: str | None = None,
    ) -> Proc:
        """The real coordinator. Inbound auth: dev-insecure, or (auth_issuer) required with
        audience arp-run-coordinator. Outbound it always asks `token_endpoint` for client-credentials
        tokens (0.3.8 refuses to start without ARP_AUTH_CLIENT_ID/SECRET, even in dev-insecure).

        No PDP, executors or node registry exist here, so the local policy bypass is on
        (JARVIS_POLICY_PROFILE=dev-allow) and auto-dispatch is off: a run stays `running` with its
        root NodeRun queued until it is cancelled (with dispatch on it would fail at once with
        atomic_executor_unconfigured)."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        env = clean_env(
            JARVIS_RUN_STORE_URL=stores["runstore"].url,
            JARVIS_EVENT_STREAM_URL=stores["eventstream"].url,
            JARVIS_ARTIFACT_STORE_URL=stores["artifactstore"].url,
            JARVIS_RUN_COORDINATOR_PUBLIC_URL=url,
            JARVIS_POLICY_PROFILE="dev-allow",
            JARVIS_RUN_COORDINATOR_AUTO_DISPATCH="false",
            ARP_AUTH_CLIENT_ID=COORDINATOR_CLIENT_ID,
            ARP_AUTH_CLIENT_SECRET=COORDINATOR_CLIENT_SECRET,
            ARP_AUTH_TOKEN_ENDPOINT=token_endpoint,
        )
        if auth_issuer:
            env.update(
                ARP_AUTH_MODE="required",
                ARP_AUTH_ISSUER=auth_issuer,
                ARP_AUTH_AUDIENCE=COORDINATOR_AUDIENCE,
            )
        else:
            env["ARP_AUTH_PROFILE"] = "dev-insecure"
        return self.spawn(
            name,
            [str(VENV_BIN / "arp-jarvis-run-coordinator"), "--host", "127.0.0.1", "--port", str(port)],
            env,
            url,
        )

    # -- our gateway ---------------------------------------------------------------------
    def start_gateway(
        self,
        name: str,
        binary: Path,
        coordinator_url: str,
        *,
        port: int | None = None,
        env_extra: dict[str, str] | None = None,
        yaml_extra: str = "",
    ) -> Proc:
        """Runs in its own empty directory, so a developer's .env.local is not picked up."""
        port = port or free_port()
        url = f"http://127.0.0.1:{port}"
        home = self.workdir / name
        home.mkdir(exist_ok=True)
        config = home / "gateway.yaml"
        config.write_text(
            "server:\n"
            "  grace_period_seconds: 0\n"
            "  graceful_shutdown_timeout_seconds: 1\n"
            f"  upgrade_sock: {home}/upgrade.sock\n"
            f"  pid_file: {home}/gateway.pid\n" + yaml_extra,
            encoding="utf-8",
        )
        env = clean_env(JARVIS_RUN_COORDINATOR_URL=coordinator_url, **(env_extra or {}))
        return self.spawn(
            name,
            [str(binary), "--config", str(config), "--host", "127.0.0.1", "--port", str(port)],
            env,
            url,
            cwd=home,
        )


def gateway_binary() -> Path:
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    return target / "debug" / "arp-jarvis-rungateway"


def _signal_group(popen: subprocess.Popen, sig: int) -> None:
    if popen.poll() is not None:
        return  # exited and reaped: its pid may belong to someone else by now
    try:
        os.killpg(popen.pid, sig)  # the group id is the child's pid (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


def install_signal_handlers() -> None:
    """SIGTERM/SIGHUP raise SystemExit and SIGINT KeyboardInterrupt (also when started with SIGINT
    ignored, as background jobs of a script are), so that `finally` blocks run."""

    def _raise(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pretty(body: bytes | str) -> str:
    try:
        return json.dumps(json.loads(body), indent=2, sort_keys=True)
    except (ValueError, TypeError):
        return body.decode("utf-8", "replace") if isinstance(body, bytes) else body
