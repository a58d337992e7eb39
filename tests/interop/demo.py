"""The demo behind scripts/demo: the real JARVIS stack (PyPI 0.3.8) with our gateway in front.

Starts a token endpoint (the coordinator asks one for client-credentials tokens even in
dev-insecure), the Run Store, Event Stream and Artifact Store, the Run Coordinator and the
gateway, all dev-insecure on 127.0.0.1; starts a run through the gateway from examples/run.json,
prints it and its events, then keeps everything running until Ctrl-C and prints what to try.

Preferred ports (the services' defaults; a busy one is replaced by a free one):
gateway 8080, coordinator 8081, run store 8091, artifact store 8092, event stream 8093.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import stack as st  # noqa: E402
from idp import IdP  # noqa: E402
from run_interop import call  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8080, help="gateway port (default 8080, else a free one)")
    parser.add_argument("--request", default=str(st.REPO / "examples" / "run.json"), help="run request JSON file")
    parser.add_argument("--no-wait", action="store_true", help="stop everything after the first run (smoke test)")
    args = parser.parse_args()
    st.install_signal_handlers()

    workdir = Path(tempfile.mkdtemp(prefix="arp-demo-"))
    stack = st.Stack(workdir)
    idp = IdP({st.COORDINATOR_CLIENT_ID: st.COORDINATOR_CLIENT_SECRET}, port=st.free_port(8099)).start()
    try:
        binary = st.gateway_binary()
        if not binary.exists():
            print(f"demo: gateway binary missing: {binary} (scripts/demo builds it)", file=sys.stderr)
            return 2
        print("==> starting the JARVIS stack (run store, event stream, artifact store, run coordinator)")
        stores = stack.start_stores(
            {"runstore": st.free_port(8091), "artifactstore": st.free_port(8092), "eventstream": st.free_port(8093)}
        )
        stack.wait_healthy(list(stores.values()))
        coord = stack.start_coordinator("coordinator", stores, idp.token_endpoint, port=st.free_port(8081))
        stack.wait_healthy([coord])
        print("==> starting the gateway (dev-insecure)")
        gw = stack.start_gateway(
            "gateway", binary, coord.url, port=st.free_port(args.port), env_extra={"ARP_AUTH_PROFILE": "dev-insecure"}
        )
        stack.wait_healthy([gw])
        base = gw.url
        if not base.endswith(f":{args.port}"):
            print(f"demo: port {args.port} is busy; the gateway listens on {base} instead")

        request = json.loads(Path(args.request).read_text(encoding="utf-8"))
        print(f"\n==> POST {base}/v1/runs  (body: {args.request})")
        r = call("POST", f"{base}/v1/runs", request)
        print(st.pretty(r.body))
        if r.status != 200:
            print(f"demo: starting the run failed (HTTP {r.status})", file=sys.stderr)
            return 1
        run_id = r.json()["run_id"]
        print(f"\n==> GET {base}/v1/runs/{run_id}/events")
        r = call("GET", f"{base}/v1/runs/{run_id}/events")
        print(f"HTTP {r.status}, Content-Type: {r.headers.get('content-type')}")
        for line in r.body.decode().splitlines():
            print(line)

        print(
            f"""
The gateway is running on {base}, in front of the JARVIS Run Coordinator 0.3.8 on {coord.url}.
The run stays `running`: this stack has no executors, so its root node waits in the queue.
Try next:

  curl -s {base}/v1/health
  curl -s {base}/v1/version
  curl -s {base}/v1/runs/{run_id}
  curl -s {base}/v1/runs/{run_id}/events
  curl -s -X POST '{base}/v1/runs/{run_id}:cancel'
  curl -s -X POST {base}/v1/runs -H 'Content-Type: application/json' -d @examples/run.json
  scripts/send-request --port {gw.url.rsplit(':', 1)[1]} --request examples/run.json

Logs: {workdir}/*.log""",
            flush=True,
        )
        if args.no_wait:
            return 0
        print("Press Ctrl-C to stop everything.", flush=True)
        while True:
            for proc in stack.procs:
                if proc.popen.poll() is not None:
                    print(f"\ndemo: {proc.name} exited (code {proc.popen.returncode}); log:\n{proc.log_tail()}")
                    return 1
            time.sleep(1)
    except KeyboardInterrupt:
        print("\n==> stopping")
        return 0
    except SystemExit as exc:
        print("\n==> stopping")
        return int(exc.code or 0)
    except RuntimeError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        idp.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
