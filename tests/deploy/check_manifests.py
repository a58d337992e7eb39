#!/usr/bin/env python3
"""Checks on rendered Kubernetes manifests (`kubectl kustomize` output) that a JSON schema cannot
make: the links between the gateway's YAML (in the generated ConfigMap) and the Deployment, the
security settings the README promises, and the opt-in ServiceMonitor (a CRD kind that
kubernetes-validate has no schema for).

    check_manifests.py RENDERED.yaml          exit 0 when every check holds, 1 otherwise

Run by tests/deploy/validate with the .venv-deploy interpreter (PyYAML and jsonschema come with
kubernetes-validate).
"""
import json
import math
import os
import sys

import jsonschema
import yaml

NAME = "arp-jarvis-rungateway"
CONFIG_DIR = "/etc/arp-jarvis-rungateway"
CONFIG_FILE = CONFIG_DIR + "/gateway.yaml"
SECRET_ENV = "ARP_AUTH_CLIENT_SECRET"
MARGIN_SECONDS = 5  # deploy/README.md: the margin in terminationGracePeriodSeconds
HERE = os.path.dirname(os.path.abspath(__file__))

problems = []


def fail(msg):
    problems.append(msg)


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name=None):
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        fail(f"expected exactly one {kind}{' ' + name if name else ''}, found {len(found)}")
        return None
    return found[0]


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def port_of(container, ref):
    """containerPort for a probe/Service port given by number or by name."""
    if isinstance(ref, int):
        return ref
    for p in container.get("ports", []):
        if p.get("name") == ref:
            return p["containerPort"]
    fail(f"container {container['name']}: no port named {ref!r}")
    return None


def listen_port(addr, what):
    host, _, port = str(addr).rpartition(":")
    if not port.isdigit():
        fail(f"{what}: {addr!r} is not host:port")
        return None, None
    return host.strip("[]"), int(port)


def arg_value(args, flag):
    for i, a in enumerate(args):
        if a == flag and i + 1 < len(args):
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def cpu_cores(q):
    q = str(q)
    return int(q[:-1]) / 1000 if q.endswith("m") else float(q)


def check_security(pod, c, sa):
    psc = pod.get("securityContext", {})
    csc = c.get("securityContext", {})
    eff = lambda k: csc.get(k, psc.get(k))  # noqa: E731 (container wins over pod)
    if eff("runAsNonRoot") is not True:
        fail("runAsNonRoot is not true")
    uid = eff("runAsUser")
    if not isinstance(uid, int) or uid == 0:
        fail(f"runAsUser must be a non-zero number (the image's USER 65532), got {uid!r}")
    if csc.get("readOnlyRootFilesystem") is not True:
        fail("readOnlyRootFilesystem is not true")
    if csc.get("allowPrivilegeEscalation") is not False:
        fail("allowPrivilegeEscalation is not false")
    if csc.get("privileged"):
        fail("container is privileged")
    if "ALL" not in csc.get("capabilities", {}).get("drop", []):
        fail("capabilities do not drop ALL")
    if csc.get("capabilities", {}).get("add"):
        fail("capabilities are added")
    if (eff("seccompProfile") or {}).get("type") != "RuntimeDefault":
        fail("seccompProfile is not RuntimeDefault")
    if pod.get("automountServiceAccountToken") is not False:
        fail("pod mounts a service account token (automountServiceAccountToken is not false)")
    if sa is not None and sa.get("automountServiceAccountToken") is not False:
        fail(f"ServiceAccount {sa['metadata']['name']}: automountServiceAccountToken is not false")
    # the only writes go to /tmp: it must be a writable volume
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
    if not tmp or "emptyDir" not in vols.get(tmp[0]["name"], {}) or tmp[0].get("readOnly"):
        fail("/tmp is not a writable emptyDir (upgrade socket and pid file live there)")


def check_probes(c, admin_port):
    want = {"startupProbe": "/readyz", "readinessProbe": "/readyz", "livenessProbe": "/livez"}
    for probe, path in want.items():
        p = c.get(probe)
        if not p:
            fail(f"container has no {probe}")
            continue
        get = p.get("httpGet") or {}
        if get.get("path") != path:
            fail(f"{probe} path is {get.get('path')!r}, expected {path}")
        if admin_port is not None and port_of(c, get.get("port")) != admin_port:
            fail(f"{probe} port {get.get('port')!r} is not admin.listen's port {admin_port}")


def check_shutdown(pod, c, server):
    grace = server.get("grace_period_seconds", 30)
    timeout = server.get("graceful_shutdown_timeout_seconds", 5)
    pre = (c.get("lifecycle", {}).get("preStop") or {})
    if "sleep" not in pre:
        fail("no preStop sleep: endpoints would still route to a pod that stopped accepting")
        sleep = 0
    else:
        sleep = pre["sleep"]["seconds"]
    need = sleep + grace + timeout + MARGIN_SECONDS
    tgps = pod.get("terminationGracePeriodSeconds", 30)
    if tgps < need:
        fail(f"terminationGracePeriodSeconds {tgps} < preStop {sleep} + grace_period_seconds "
             f"{grace} + graceful_shutdown_timeout_seconds {timeout} + margin {MARGIN_SECONDS}"
             f" = {need}")


def check_config_links(docs, dep, c, cfg):
    pod = dep["spec"]["template"]["spec"]
    server = cfg.get("server") or {}
    admin = (cfg.get("admin") or {}).get("listen")
    admin_port = None
    if not admin:
        fail("gateway.yaml: admin.listen is not set: /readyz, /livez and /metrics would not exist")
    else:
        host, admin_port = listen_port(admin, "admin.listen")
        if host in ("127.0.0.1", "localhost", "::1"):
            fail(f"admin.listen {admin} is loopback: the kubelet's probes cannot reach it")

    # public listener: the args win over the file
    args = c.get("args", [])
    host = arg_value(args, "--host") or server.get("host", "127.0.0.1")
    port = int(arg_value(args, "--port") or server.get("port", 8080))
    if host in ("127.0.0.1", "localhost", "::1"):
        fail(f"the gateway listens on {host}: unreachable from the Service")
    if port_of(c, "http") != port:
        fail(f"containerPort 'http' is not the listen port {port}")
    if admin_port is not None and port_of(c, "admin") != admin_port:
        fail(f"containerPort 'admin' is not admin.listen's port {admin_port}")

    check_probes(c, admin_port)
    check_shutdown(pod, c, server)

    threads = server.get("threads", 2)
    limit = c.get("resources", {}).get("limits", {}).get("cpu")
    if limit is not None and threads > math.ceil(cpu_cores(limit)):
        fail(f"server.threads {threads} exceeds the CPU limit {limit}")


def check_secret_env(c):
    for e in c.get("env", []):
        if "SECRET" in e["name"] and "value" in e:
            fail(f"env {e['name']} has a literal value: it must come from a Secret")
    env = {e["name"]: e for e in c.get("env", [])}
    ref = (env.get(SECRET_ENV, {}).get("valueFrom") or {}).get("secretKeyRef")
    if not ref:
        fail(f"env {SECRET_ENV} is not taken from a Secret (valueFrom.secretKeyRef)")


def check_services(docs, dep, pod_labels):
    services = by_kind(docs, "Service")
    api = [s for s in services if any(p.get("targetPort") == "http" for p in s["spec"]["ports"])]
    metrics = [s for s in services if any(p.get("name") == "metrics" for p in s["spec"]["ports"])]
    if not api:
        fail("no Service targets the http port")
    if not metrics:
        fail("no metrics Service (a port named 'metrics')")
    for s in services:
        n = s["metadata"]["name"]
        if not matches(s["spec"].get("selector"), pod_labels):
            fail(f"Service {n}: selector does not match the pods")
        if s["spec"].get("sessionAffinity", "None") != "None":
            fail(f"Service {n}: session affinity must be None")
    for s in metrics:
        if any(p.get("targetPort") == "http" for p in s["spec"]["ports"]):
            fail(f"Service {s['metadata']['name']}: the metrics Service exposes the API port")
    return metrics


def check_scaling(docs, dep, pod_labels):
    name = dep["metadata"]["name"]
    ru = dep["spec"].get("strategy", {}).get("rollingUpdate", {})
    if dep["spec"].get("strategy", {}).get("type", "RollingUpdate") != "RollingUpdate" \
            or ru.get("maxUnavailable") not in (0, "0%"):
        fail("rolling update must keep every pod available (maxUnavailable: 0)")
    pdb = one(docs, "PodDisruptionBudget")
    if pdb and not matches(pdb["spec"]["selector"].get("matchLabels"), pod_labels):
        fail("PodDisruptionBudget selector does not match the pods")
    hpa = one(docs, "HorizontalPodAutoscaler")
    if hpa:
        ref = hpa["spec"]["scaleTargetRef"]
        if ref.get("kind") != "Deployment" or ref.get("name") != name:
            fail(f"HPA targets {ref.get('kind')}/{ref.get('name')}, not Deployment/{name}")
        if not any(m.get("resource", {}).get("name") == "cpu" for m in hpa["spec"]["metrics"]):
            fail("HPA does not scale on CPU")
        down = hpa["spec"].get("behavior", {}).get("scaleDown", {})
        if down.get("stabilizationWindowSeconds", 300) < 300:
            fail("HPA scale-down is not slow (stabilizationWindowSeconds < 300)")
        if hpa["spec"].get("minReplicas", 1) < 2:
            fail("HPA minReplicas < 2: one pod draining leaves nothing")
    for tsc_key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname"):
        tscs = dep["spec"]["template"]["spec"].get("topologySpreadConstraints", [])
        t = [x for x in tscs if x["topologyKey"] == tsc_key]
        if not t or not matches(t[0].get("labelSelector", {}).get("matchLabels"), pod_labels):
            fail(f"no topology spread over {tsc_key} selecting the pods")


def check_servicemonitors(docs, metrics_services):
    with open(os.path.join(HERE, "servicemonitor.schema.json")) as f:
        schema = json.load(f)
    for sm in by_kind(docs, "ServiceMonitor"):
        n = sm["metadata"]["name"]
        try:
            jsonschema.Draft202012Validator(schema).validate(sm)
        except jsonschema.ValidationError as e:
            path = ".".join(str(p) for p in e.absolute_path)
            fail(f"ServiceMonitor {n}: {path}: {e.message}")
            continue
        sel = sm["spec"]["selector"].get("matchLabels", {})
        targets = [s for s in metrics_services if matches(sel, s["metadata"].get("labels", {}))]
        if not targets:
            fail(f"ServiceMonitor {n}: selector {sel} matches no metrics Service")
        others = [s["metadata"]["name"] for s in by_kind(docs, "Service")
                  if s not in targets and matches(sel, s["metadata"].get("labels", {}))]
        if others:
            fail(f"ServiceMonitor {n}: selector also matches {others}")
        for ep in sm["spec"]["endpoints"]:
            for s in targets:
                if ep.get("port") not in [p.get("name") for p in s["spec"]["ports"]]:
                    fail(f"ServiceMonitor {n}: port {ep.get('port')!r} is not a port name of "
                         f"Service {s['metadata']['name']}")


def main(path):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    dep = one(docs, "Deployment", NAME)
    if dep is None:
        return report(path)
    pod = dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if not matches(dep["spec"]["selector"].get("matchLabels"), pod_labels):
        fail("Deployment selector does not match its pod labels")
    containers = [c for c in pod["containers"] if c["name"] == "gateway"]
    if len(containers) != 1:
        fail("no container named gateway")
        return report(path)
    c = containers[0]

    sa_name = pod.get("serviceAccountName", "default")
    sa = next((s for s in by_kind(docs, "ServiceAccount") if s["metadata"]["name"] == sa_name),
              None)
    if sa is None:
        fail(f"ServiceAccount {sa_name} is not part of the manifests")
    check_security(pod, c, sa)
    check_secret_env(c)

    # the configuration: the ConfigMap mounted where --config points
    if arg_value(c.get("args", []), "--config") != CONFIG_FILE:
        fail(f"--config is not {CONFIG_FILE}")
    mount = [m for m in c.get("volumeMounts", []) if m["mountPath"] == CONFIG_DIR]
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    cm_name = vols.get(mount[0]["name"], {}).get("configMap", {}).get("name") if mount else None
    cm = next((m for m in by_kind(docs, "ConfigMap") if m["metadata"]["name"] == cm_name), None)
    if cm is None or "gateway.yaml" not in cm.get("data", {}):
        fail(f"no ConfigMap with gateway.yaml mounted at {CONFIG_DIR} (volume -> {cm_name})")
    else:
        cfg = yaml.safe_load(cm["data"]["gateway.yaml"]) or {}
        check_config_links(docs, dep, c, cfg)
    for m in by_kind(docs, "ConfigMap"):
        for k, v in (m.get("data") or {}).items():
            try:
                data = yaml.safe_load(v)
            except yaml.YAMLError:
                continue
            if isinstance(data, dict) and isinstance(data.get("auth"), dict) \
                    and data["auth"].get("client_secret") is not None:
                fail(f"ConfigMap {m['metadata']['name']} key {k} holds auth.client_secret: "
                     "it belongs in the Secret")

    metrics = check_services(docs, dep, pod_labels)
    check_scaling(docs, dep, pod_labels)
    check_servicemonitors(docs, metrics)
    return report(path)


def report(path):
    for p in problems:
        print(f"  {os.path.basename(path)}: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
