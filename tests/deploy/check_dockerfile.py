#!/usr/bin/env python3
"""Static checks of the Dockerfile that hadolint does not make (there is no Docker engine here
to build it): the links between the Dockerfile, Cargo.toml, .dockerignore and deploy/.

    check_dockerfile.py REPO_ROOT        exit 0 when every check holds, 1 otherwise
"""
import fnmatch
import json
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "."
problems = []


def read(p):
    with open(os.path.join(root, p)) as f:
        return f.read()


def instructions(text):
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, cur = [], ""
    for line in text.splitlines():
        s = line.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        if cur and s.startswith("#"):
            continue
        if s.endswith("\\"):
            cur += s[:-1] + " "
            continue
        cur += s
        word, _, rest = cur.partition(" ")
        out.append((word.upper(), rest.strip()))
        cur = ""
    return out


docker = instructions(read("Dockerfile"))
cargo = read("Cargo.toml")
ignore = [l.strip() for l in read(".dockerignore").splitlines()
          if l.strip() and not l.strip().startswith("#")]

# the toolchain of Cargo.toml's rust-version
m = re.search(r'^rust-version\s*=\s*"([^"]+)"', cargo, re.M)
rust_version = m.group(1) if m else None
args = dict(re.match(r"(\w+)=(\S*)", a).groups() for i, a in docker if i == "ARG" and "=" in a)
if args.get("RUST_VERSION") != rust_version:
    problems.append(f"ARG RUST_VERSION={args.get('RUST_VERSION')} but Cargo.toml has "
                    f"rust-version {rust_version}")
froms = [a for i, a in docker if i == "FROM"]
if len(froms) < 2:
    problems.append("not a multi-stage build")
elif "bookworm" not in froms[0] or "debian12" not in froms[-1] and "bookworm" not in froms[-1]:
    problems.append(f"builder and runtime are not both Debian 12 (bookworm): {froms}")

# every cargo build is --locked
for i, a in docker:
    if i == "RUN" and "cargo build" in a and "--locked" not in a:
        problems.append(f"cargo build without --locked: {a[:80]}")

# a numeric USER in the final stage (runAsNonRoot admits only a numeric user)
final = docker[max(k for k, (i, _) in enumerate(docker) if i == "FROM"):]
users = [a for i, a in final if i == "USER"]
if not users or not re.fullmatch(r"[1-9][0-9]*(:[0-9]+)?", users[-1]):
    problems.append(f"final stage USER must be numeric and not 0, got {users}")

# ports and the command line
exposed = " ".join(a for i, a in final if i == "EXPOSE").split()
for p in ("8080", "9090"):
    if p not in exposed:
        problems.append(f"EXPOSE lacks {p}")
cmd = [a for i, a in final if i == "CMD"]
entry = [a for i, a in final if i == "ENTRYPOINT"]
try:
    argv = (json.loads(entry[-1]) if entry else []) + (json.loads(cmd[-1]) if cmd else [])
except ValueError:
    argv = []
    problems.append("ENTRYPOINT/CMD are not in exec (JSON) form: SIGTERM would hit a shell")
want = ["--host", "0.0.0.0", "--port", "8080", "--config", "/etc/arp-jarvis-rungateway/gateway.yaml"]
for k in range(0, len(want), 2):
    flag, val = want[k], want[k + 1]
    if flag not in argv or argv.index(flag) + 1 >= len(argv) or argv[argv.index(flag) + 1] != val:
        problems.append(f"command line lacks {flag} {val}: {argv}")

# files copied from the context exist and are not excluded by .dockerignore
for i, a in docker:
    if i != "COPY" or "--from=" in a:
        continue
    srcs = a.split()[:-1]
    for s in srcs:
        if s.startswith("--"):
            continue
        if not os.path.exists(os.path.join(root, s)):
            problems.append(f"COPY {s}: no such path")
        top = s.split("/")[0]
        for pat in ignore:
            p = pat.rstrip("/")
            if not pat.startswith("!") and (fnmatch.fnmatch(s, p) or fnmatch.fnmatch(top, p)):
                problems.append(f"COPY {s} is excluded by .dockerignore pattern {pat!r}")

# what must never enter the build context
for must in ("target", ".git", ".env"):
    if not any(fnmatch.fnmatch(must, p.rstrip("/")) for p in ignore):
        problems.append(f".dockerignore does not exclude {must}")

for p in problems:
    print(f"  FAIL {p}")
sys.exit(1 if problems else 0)
