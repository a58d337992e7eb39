"""A small OpenID Connect identity provider and token service (STS) for interop runs and the demo.

Python counterpart of the Rust test IdP (tests/common/idp.rs), for processes that live outside
cargo tests: the JARVIS Run Coordinator asks a token endpoint for client-credentials tokens even
in dev-insecure, and the gateway exchanges inbound tokens (RFC 8693) when auth is required.

Keycloak layout, so that "{issuer}/protocol/openid-connect/token" (the default token endpoint of
the gateway and of arp-auth) works:

    issuer     {base}/realms/interop
    discovery  {issuer}/.well-known/openid-configuration
    JWKS       {issuer}/protocol/openid-connect/certs
    token      {issuer}/protocol/openid-connect/token

An RSA-2048 key (kid "interop-rsa-1", RS256) is generated at start. Grants:

- client_credentials: client_id + client_secret of a registered client; optional audience.
  The token's sub is "service-account-<client_id>", aud the requested audience (else the client).
- urn:ietf:params:oauth:grant-type:token-exchange: a registered client exchanges a subject
  token signed here (checked: signature, exp, subject_token_type) for a token with the subject's
  sub, aud = the requested audience, azp = the exchanging client, act = {"sub": client}.

For tests and the demo a user token can be minted directly (never in a real IdP):
    POST {issuer}/dev/user-token   form: sub, aud, ttl (seconds)

Every token request is recorded (client_secret, subject_token never stored); the driver reads
them in-process through IdP.requests(), other processes through GET {issuer}/dev/requests.

Run standalone:  python idp.py --port 0 --client arp-run-gateway:secret [--client ...]
It prints one line, `IDP_ISSUER=<issuer>`, once it listens.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
KID = "interop-rsa-1"
REALM_PATH = "/realms/interop"


def _b64u_uint(value: int) -> str:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class IdP:
    """The identity provider; `start()` serves it on a daemon thread."""

    def __init__(
        self,
        clients: dict[str, str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token_ttl: int = 300,
    ) -> None:
        self.clients = dict(clients)
        self.token_ttl = token_ttl
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._lock = threading.Lock()
        self._requests: list[dict[str, Any]] = []
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        self.issuer = self.base_url + REALM_PATH
        self._thread: threading.Thread | None = None

    # -- endpoints -----------------------------------------------------------------------
    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/token"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/protocol/openid-connect/certs"

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    def start(self) -> "IdP":
        self._thread = threading.Thread(target=self._server.serve_forever, name="idp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- tokens --------------------------------------------------------------------------
    def mint(self, claims: dict[str, Any], *, ttl: int | None = None) -> str:
        now = int(time.time())
        body = {
            "iss": self.issuer,
            "iat": now,
            "nbf": now,
            "exp": now + (ttl if ttl is not None else self.token_ttl),
            "jti": uuid.uuid4().hex,
        }
        body.update(claims)
        return jwt.encode(body, self._key, algorithm="RS256", headers={"kid": KID, "typ": "JWT"})

    def user_token(self, sub: str, aud: str | list[str], *, ttl: int | None = None) -> str:
        return self.mint({"sub": sub, "aud": aud, "azp": "interop-cli", "typ": "Bearer"}, ttl=ttl)

    def verify(self, token: str) -> dict[str, Any]:
        return jwt.decode(
            token,
            self._key.public_key(),
            algorithms=["RS256"],
            issuer=self.issuer,
            options={"verify_aud": False},
        )

    def jwks(self) -> dict[str, Any]:
        numbers = self._key.public_key().public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "alg": "RS256",
                    "kid": KID,
                    "n": _b64u_uint(numbers.n),
                    "e": _b64u_uint(numbers.e),
                }
            ]
        }

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "token_endpoint": self.token_endpoint,
            "grant_types_supported": ["client_credentials", TOKEN_EXCHANGE],
            "id_token_signing_alg_values_supported": ["RS256"],
            "response_types_supported": ["token"],
            "subject_types_supported": ["public"],
        }

    def requests(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._requests]

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self._requests.append(entry)

    def token_request(self, form: dict[str, str]) -> tuple[int, dict[str, Any]]:
        grant = form.get("grant_type", "")
        client_id = form.get("client_id", "")
        audience = form.get("audience") or None
        entry: dict[str, Any] = {
            "time": time.time(),
            "grant_type": grant,
            "client_id": client_id,
            "audience": audience,
            "scope": form.get("scope"),
            "fields": sorted(form),
        }
        status, body = self._grant(form, grant, client_id, audience, entry)
        entry["status"] = status
        self._record(entry)
        return status, body

    def _grant(
        self,
        form: dict[str, str],
        grant: str,
        client_id: str,
        audience: str | None,
        entry: dict[str, Any],
    ) -> tuple[int, dict[str, Any]]:
        expected = self.clients.get(client_id)
        if expected is None or not secrets.compare_digest(expected, form.get("client_secret", "")):
            return 401, {"error": "invalid_client", "error_description": "Invalid client credentials"}
        if grant == "client_credentials":
            claims = {
                "sub": f"service-account-{client_id}",
                "aud": audience or client_id,
                "azp": client_id,
                "client_id": client_id,
                "typ": "Bearer",
            }
        elif grant == TOKEN_EXCHANGE:
            if form.get("subject_token_type") != ACCESS_TOKEN_TYPE:
                return 400, {"error": "invalid_request", "error_description": "Unsupported subject_token_type"}
            if form.get("requested_token_type", ACCESS_TOKEN_TYPE) != ACCESS_TOKEN_TYPE:
                return 400, {"error": "invalid_request", "error_description": "Unsupported requested_token_type"}
            try:
                subject = self.verify(form.get("subject_token", ""))
            except jwt.PyJWTError as exc:
                return 400, {"error": "invalid_grant", "error_description": f"Invalid subject token: {exc}"}
            entry["subject_sub"] = subject.get("sub")
            entry["subject_aud"] = subject.get("aud")
            claims = {
                "sub": subject.get("sub"),
                "aud": audience or client_id,
                "azp": client_id,
                "act": {"sub": client_id},
                "typ": "Bearer",
            }
        else:
            return 400, {"error": "unsupported_grant_type", "error_description": f"Unsupported grant_type {grant!r}"}
        if form.get("scope"):
            claims["scope"] = form["scope"]
        token = self.mint(claims)
        entry["issued_sub"] = claims["sub"]
        entry["issued_aud"] = claims["aud"]
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_ttl,
        }
        if grant == TOKEN_EXCHANGE:
            body["issued_token_type"] = ACCESS_TOKEN_TYPE
        return 200, body

    # -- HTTP ----------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        idp = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib name
                pass

            def _send(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                raw = json.dumps(body).encode("utf-8")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.send_header("Cache-Control", "no-store")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(raw)

            def _form(self) -> dict[str, str]:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length).decode("utf-8") if length else ""
                return {k: v[-1] for k, v in urllib.parse.parse_qs(raw, keep_blank_values=True).items()}

            def do_GET(self) -> None:  # noqa: N802 - stdlib name
                path = urllib.parse.urlsplit(self.path).path
                if path == REALM_PATH + "/.well-known/openid-configuration":
                    self._send(200, idp.discovery())
                elif path in (REALM_PATH + "/protocol/openid-connect/certs", "/jwks"):
                    self._send(200, idp.jwks(), {"Cache-Control": "max-age=300"})
                elif path == REALM_PATH + "/dev/requests":
                    self._send(200, idp.requests())
                elif path == "/health":
                    self._send(200, {"status": "ok"})
                else:
                    self._send(404, {"error": "not_found"})

            def do_POST(self) -> None:  # noqa: N802 - stdlib name
                path = urllib.parse.urlsplit(self.path).path
                form = self._form()
                if path in (REALM_PATH + "/protocol/openid-connect/token", "/token"):
                    status, body = idp.token_request(form)
                    self._send(status, body)
                elif path == REALM_PATH + "/dev/user-token":
                    aud = form.get("aud") or "arp-run-gateway"
                    token = idp.user_token(form.get("sub") or "interop-user", aud, ttl=int(form.get("ttl") or 0) or None)
                    self._send(200, {"access_token": token, "token_type": "Bearer", "expires_in": idp.token_ttl})
                else:
                    self._send(404, {"error": "not_found"})

        return Handler


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Test OpenID Connect IdP / STS (never for production).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID:SECRET",
        help="registered client (repeatable)",
    )
    parser.add_argument("--token-ttl", type=int, default=3600)
    args = parser.parse_args(argv)
    clients = {}
    for item in args.client:
        cid, sep, secret = item.partition(":")
        if not sep or not cid or not secret:
            parser.error(f"--client wants ID:SECRET, got {item!r}")
        clients[cid] = secret
    idp = IdP(clients, host=args.host, port=args.port, token_ttl=args.token_ttl)
    print(f"IDP_ISSUER={idp.issuer}", flush=True)
    try:
        idp._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
