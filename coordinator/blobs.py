"""Content-addressed store of models and adapters, served to agents in checksummed chunks.

A blob is the tar archive of a model or adapter directory; its name is ``sha256:<hex>`` of the
archive bytes, so the same directory always gets the same name and an agent can verify what it
fetched. Blobs live under ``STATE_DIR/blobs``; their index lives in the store's meta table.

Push: the client streams the archive; the first chunk carries the display name and kind; the
coordinator hashes while writing and stores under the digest (idempotent). Fetch: chunks of
1 MiB, each with its offset and the total size, so the agent can show progress and resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Iterator

from atoll.core.archive import check_name
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
        return json.loads(raw)

    def put(self, chunks: Iterator[tuple[bytes, str, str]], tenant: str = "") -> dict:
        """``chunks`` yields (data, display_name, kind); returns the blob's info."""
        h = hashlib.sha256()
        tmp = self.root / f".incoming-{os.getpid()}-{id(chunks)}"
        size, display, kind = 0, "", "model"
        with open(tmp, "wb") as f:
            for data, dname, k in chunks:
                display = display or dname
                kind = k or kind
                size += len(data)
                if size > MAX_BLOB_BYTES:
                    f.close()
                    tmp.unlink(missing_ok=True)
                    raise InvalidArgument(f"blob larger than {MAX_BLOB_BYTES} bytes")
                h.update(data)
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if kind not in ("model", "adapter"):
            tmp.unlink(missing_ok=True)
            raise InvalidArgument(f"kind {kind!r} must be model or adapter")
        try:
            tarfile.open(tmp, "r").getmembers()
        except (tarfile.TarError, OSError):
            tmp.unlink(missing_ok=True)
            raise InvalidArgument("pushed data is not a tar archive of a directory") from None
        name = "sha256:" + h.hexdigest()
        tmp.replace(self._path(name))
        info = {"name": name, "kind": kind, "size_bytes": size, "display_name": display, "tenant": tenant}
        try:
            old = self.info(name)
            if old.get("tenant", "") != tenant:   # same bytes pushed by two tenants: shared, not owned
                info["tenant"] = ""
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
