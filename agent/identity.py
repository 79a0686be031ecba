"""The agent's identity, kept in its state directory.

- ``node.key``: this node's Ed25519 private key (PEM, mode 0600), created on the first start.
  Every ``Register`` proves possession of it; the coordinator binds its public half to the
  node id, so copying ``node_id`` to another host gets that host refused.
- ``coordinator.pub``: the coordinator's signing key, pinned at the first registration (over
  TLS the fleet CA vouches for the coordinator that sent it; in plaintext on loopback it is
  trust on first use). Capability tokens are verified with it; a coordinator presenting
  another key is refused with :class:`KeyChanged`.
- the node token the coordinator sends down the heartbeat stream (memory only).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from atoll.core import credentials as cred
from atoll.core.errors import FailedPrecondition
from atoll.core.logs import kv

log = logging.getLogger("atoll.agent")

KEY_FILE = "node.key"
PROOF_REUSE_S = 20.0      # a holder proof is made again after this long
PIN_FILE = "coordinator.pub"


class KeyChanged(FailedPrecondition):
    pass


def load_or_create_key(path: Path) -> cred.PrivateKey:
    """The private key at ``path``, created (0600) when missing; a key file others may read is
    made private again, with a warning."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            log.warning("node key was readable by others; made private", extra=kv(path=str(path), mode=oct(mode)))
            os.chmod(path, 0o600)
        return cred.private_from_pem(path.read_bytes(), f"node key {path}")
    key = cred.new_private_key()
    with os.fdopen(fd, "wb") as f:
        f.write(cred.private_to_pem(key))
    log.info("created node key", extra=kv(path=str(path), key=cred.fingerprint(cred.public_bytes(key))))
    return key


class NodeIdentity:
    def __init__(self, state_dir: Path, over_tls: bool):
        state_dir.mkdir(parents=True, exist_ok=True)
        self.key = load_or_create_key(state_dir / KEY_FILE)
        self.pin_path = state_dir / PIN_FILE
        self.over_tls = over_tls
        self.coordinator_key: cred.PublicKey | None = None
        if self.pin_path.exists():
            self.coordinator_key = cred.public_from_bytes(bytes.fromhex(self.pin_path.read_text().strip()),
                                                          f"pinned coordinator key {self.pin_path}")
        self.token, self.token_expires = "", 0.0
        self._proofs: dict[str, tuple[str, float]] = {}     # callee -> (proof, when made)

    def pin(self, raw: bytes) -> None:
        """Pin the coordinator's key on first sight; refuse one that differs from the pin."""
        if not raw:
            raise FailedPrecondition("the coordinator sent no signing key", hint="upgrade the coordinator")
        if self.coordinator_key is not None:
            pinned = cred.public_bytes(self.coordinator_key)
            if pinned != raw:
                raise KeyChanged(f"the coordinator presents signing key {cred.fingerprint(raw)}, but this agent "
                                 f"pinned {cred.fingerprint(pinned)} in {self.pin_path}",
                                 hint="if the coordinator was reinstalled on purpose, delete that file; "
                                      "otherwise something else answers at the coordinator's address")
            return
        self.coordinator_key = cred.public_from_bytes(raw, "the coordinator's signing key")
        self.pin_path.write_text(raw.hex() + "\n")
        log.info("pinned the coordinator's signing key", extra=kv(
            key=cred.fingerprint(raw), vouched_by="TLS (the fleet CA)" if self.over_tls else "trust on first use"))

    def set_token(self, token: str, expires: float) -> None:
        self.token, self.token_expires = token, expires

    def current_token(self) -> str:
        """The node token, or "" when none is held or it expired."""
        return self.token if self.token and self.token_expires > time.time() else ""

    def call_proof(self, audience: str) -> str:
        """This node's proof that it holds its token, for one callee (a node id, or
        ``coordinator``): the node key's signature over the callee and the time, reused for
        :data:`PROOF_REUSE_S` (the callee accepts one within a minute of its clock)."""
        now = time.time()
        hit = self._proofs.get(audience)
        if hit is None or now - hit[1] > PROOF_REUSE_S:
            if len(self._proofs) > 4096:
                self._proofs.clear()
            hit = self._proofs[audience] = (cred.make_call_proof(self.key, audience, now), now)
        return hit[0]
