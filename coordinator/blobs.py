"""Content-addressed store of models and adapters, served to agents in checksummed chunks.

A blob is the tar archive of a model or adapter directory; its name is ``sha256:<hex>`` of the
archive bytes, so the same directory always gets the same name and an agent can verify what it
fetched. Blobs live under ``STATE_DIR/blobs``; their index lives in the store's meta table.

Push: the client streams the archive; the first chunk carries the display name and kind; the
coordinator hashes while writing, checks the archive against the unpacking caps
(``atoll.core.archive.check_archive``: file count, unpacked size, read from the member headers
before anything is inflated) and stores it under the digest (idempotent). Fetch: chunks of
1 MiB, each with its offset and the total size, so the agent can show progress and resume.

Ownership: a blob's info lists the tenants that pushed it (``owners``). Pushing bytes that are
already stored adds the pusher to the owners — an ownership record of its own — and never
lets it use another owner's record: :func:`may_use` asks whether a tenant is an owner. A blob
pushed while no API key existed (tenant ``""``) is public: every tenant may use it (the
operator's base models).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterator

from atoll.core.archive import check_archive, check_name
from atoll.core.errors import InvalidArgument, NotFound

CHUNK = 1 << 20
MAX_BLOB_BYTES = 64 << 30


class BlobStore:
    def __init__(self, root: Path, store):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.store = store

    def _path(self, name: str) -> Path:
        return self.root / check_name(name).replace(":", "-")

    def info(self, name: str) -> dict:
        raw = self.store.get_meta("blob:" + check_name(name))
        if raw is None or not self._path(name).exists():
            raise NotFound(f"no blob {name}", hint="push it first with `atoll push DIR`")
        info = json.loads(raw)
        if "owners" not in info:               # written before ownership records
            info["owners"] = [info.pop("tenant", "")]
        return info

    def info_for(self, name: str, tenant: str | None) -> dict:
        """The blob's info if ``tenant`` may use it (None: anyone, an admin), else NotFound as
        if it did not exist."""
        info = self.info(name)
        if tenant is not None and not may_use(info, tenant):
            raise NotFound(f"no blob {name}", hint="push it first with `atoll push DIR`")
        return info

    def put(self, chunks: Iterator[tuple[bytes, str, str]], tenant: str = "") -> dict:
        """``chunks`` yields (data, display_name, kind); returns the blob's info."""
        h = hashlib.sha256()
        tmp = self.root / f".incoming-{os.getpid()}-{id(chunks)}"
        size, display, kind = 0, "", "model"
        try:
            with open(tmp, "wb") as f:
                for data, dname, k in chunks:
                    display = display or dname
                    kind = k or kind
                    size += len(data)
                    if size > MAX_BLOB_BYTES:
                        raise InvalidArgument(f"blob larger than {MAX_BLOB_BYTES} bytes")
                    h.update(data)
                    f.write(data)
                f.flush()
                os.fsync(f.fileno())
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        if kind not in ("model", "adapter"):
            tmp.unlink(missing_ok=True)
            raise InvalidArgument(f"kind {kind!r} must be model or adapter")
        try:
            check_archive(tmp)
        except InvalidArgument as exc:
            tmp.unlink(missing_ok=True)
            raise InvalidArgument(f"pushed data refused: {exc.message}", hint=exc.hint) from None
        name = "sha256:" + h.hexdigest()
        tmp.replace(self._path(name))
        info = {"name": name, "kind": kind, "size_bytes": size, "display_name": display, "owners": [tenant]}
        try:
            old = self.info(name)
            info = {**old, "owners": sorted(set(old["owners"]) | {tenant})}   # this tenant's own record
        except NotFound:
            pass
        self.store.set_meta("blob:" + name, json.dumps(info))   # durable before acknowledging
        return info

    def read(self, name: str, offset: int = 0) -> Iterator[tuple[bytes, int, int]]:
        """Yields (data, offset, total) chunks from ``offset``."""
        info = self.info(name)
        total = info["size_bytes"]
        if offset < 0 or offset > total:
            raise InvalidArgument(f"offset {offset} outside 0..{total}")
        with open(self._path(name), "rb") as f:
            f.seek(offset)
            while True:
                data = f.read(CHUNK)
                if not data:
                    break
                yield data, offset, total
                offset += len(data)


def may_use(info: dict, tenant: str) -> bool:
    """May ``tenant`` use (fetch, stat, name in a workflow) this blob? Its owners may, and
    everyone may use a public one (pushed before any key existed)."""
    owners = info.get("owners", [])
    return "" in owners or tenant in owners
