"""Flags the two daemons (``atoll agent``, ``atoll coordinator``) share."""

from __future__ import annotations


def server_flags(p, *, cert_help: str, plaintext: str) -> None:
    """``--metrics-token-file``, ``--tls-cert``/``--tls-key`` (``cert_help`` says what the
    certificate is for) and ``--insecure`` (``plaintext``: which server may then run plaintext
    off loopback)."""
    p.add_argument("--metrics-token-file", metavar="FILE",
                   help="/metrics requires Authorization: Bearer <the token in FILE> (default: open)")
    p.add_argument("--tls-cert", metavar="PEM", help=cert_help)
    p.add_argument("--tls-key", metavar="PEM", help="private key of --tls-cert")
    p.add_argument("--insecure", action="store_true",
                   help=f"allow {plaintext} on a non-loopback address (local development only)")
