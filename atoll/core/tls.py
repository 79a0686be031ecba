"""TLS for every gRPC link: credentials from certificate paths, and the plaintext policy.

- Coordinator: ``tls_cert``/``tls_key`` serve TLS on the client port (clients authenticate
  with API keys); with ``tls_client_ca`` a second port, ``agent_listen``, requires a client
  certificate signed by that CA (mutual TLS), and AgentService refuses any caller without a
  verified certificate, on either port. A certificate signed by another CA fails the handshake.
- Agents: ``tls_ca`` verifies the coordinator; ``tls_cert``/``tls_key`` are the agent's client
  certificate, also served by its Worker endpoint (which then requires the coordinator's client
  certificate, signed by ``tls_ca``).
- Plaintext is allowed on loopback addresses for local development, and elsewhere only with
  ``--insecure``; either way the process logs an unmissable warning.
"""

from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

import grpc

from atoll.core.errors import SpecError

log = logging.getLogger("atoll.core.tls")


def read_pem(path: str | None, what: str) -> bytes | None:
    if not path:
        return None
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecError(f"{what} file not found", source=str(p), hint="give the path of a PEM file")
    data = p.read_bytes()
    if b"-----BEGIN" not in data:
        raise SpecError(f"{what} is not a PEM file", source=str(p))
    return data


def server_credentials(cert: str, key: str) -> grpc.ServerCredentials:
    """Server-side TLS only (gRPC's Python API cannot ask for an optional client certificate)."""
    c, k = read_pem(cert, "TLS certificate"), read_pem(key, "TLS key")
    return grpc.ssl_server_credentials([(k, c)])


def mutual_server_credentials(cert: str, key: str, client_ca: str) -> grpc.ServerCredentials:
    """Server TLS that refuses peers without a client certificate signed by ``client_ca``."""
    c, k = read_pem(cert, "TLS certificate"), read_pem(key, "TLS key")
    return grpc.ssl_server_credentials([(k, c)], root_certificates=read_pem(client_ca, "client CA"),
                                       require_client_auth=True)


def channel_credentials(ca: str | None, cert: str | None = None, key: str | None = None):
    """None when no CA is given (plaintext)."""
    if not ca:
        return None
    if bool(cert) != bool(key):
        raise SpecError("give both a TLS client certificate and its key, or neither")
    return grpc.ssl_channel_credentials(read_pem(ca, "CA certificate"), read_pem(key, "TLS key"),
                                        read_pem(cert, "TLS certificate"))


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def plaintext_policy(host: str, insecure: bool, what: str) -> None:
    """Refuse plaintext on a non-loopback address unless ``insecure``; always warn loudly."""
    if not is_loopback(host) and not insecure:
        raise SpecError(f"{what} would serve plaintext gRPC on {host}",
                        hint="give --tls-cert and --tls-key, or pass --insecure for local development")
    log.warning("INSECURE: %s serves plaintext gRPC on %s (no TLS); for local development only", what, host)


def handshake_failure(details: str) -> str:
    """Why a gRPC connection failed in the TLS handshake, from the error's details as the calling
    side sees them; "" when they do not say so for certain (a retry cannot fix these). The
    serving side's gRPC core logs its own reason on stderr ("Handshake failed with error ...":
    no certificate, unknown CA, plaintext peer)."""
    d = details or ""
    if "CERTIFICATE_VERIFY_FAILED" in d:
        return "the server's certificate is not signed by the CA this side trusts (unknown CA)"
    if "Hostname Verification" in d:
        return "the server's certificate does not name the address dialled (name mismatch)"
    if "WRONG_VERSION_NUMBER" in d:
        return "the server does not speak TLS (a plaintext server)"
    if "PEER_DID_NOT_RETURN_A_CERTIFICATE" in d:
        return "no client certificate was presented"
    if "handshake failed" in d.lower():
        return d[d.lower().index("handshake failed"):][:200]
    return ""


def closed_hint(details: str, tls: bool | None) -> str:
    """What a connection the server closed while it was being set up may mean ("" if it was not
    that). Ambiguous — a server restarting closes connections too — so a hint, never a verdict."""
    if "Socket closed" not in (details or ""):
        return ""
    if tls:
        return ("the server closed the connection while it was being set up: a server that requires a client "
                "certificate does so when none, or another CA's, is presented")
    return "the server closed the connection: a TLS-only server does so to plaintext clients (give its CA: " \
           "--tls-ca or ATOLL_TLS_CA)"


def plain_http_warning(host: str, what: str) -> None:
    """HTTP doors (metrics, OpenAI) speak plain HTTP: warn loudly when one listens beyond loopback."""
    if not is_loopback(host):
        log.warning("INSECURE: %s serves plain HTTP on %s, which is not a loopback address: anyone who "
                    "reaches it can read it (put a TLS proxy in front, or bind 127.0.0.1)", what, host)


def peer_has_verified_cert(context) -> bool:
    """True when the gRPC peer presented a client certificate that the TLS layer verified."""
    try:
        return bool(context.peer_identities())
    except Exception:  # noqa: BLE001 - no auth context: plaintext peer
        return False
