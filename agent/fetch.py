"""Fetch content-addressed models/adapters from the coordinator's ModelStore.

``sha256:<hex>`` names are fetched once into ``CACHE/<hex>/`` (checksum verified, resumable
from a partial download, unpacked within ``atoll.core.archive``'s caps, streamed from disk so
memory stays flat whatever the size), then used as local directories. Plain paths are used as
they are. The fetch presents the node's capability token: the coordinator serves a node only
the blobs its assignments name. :func:`prune` removes what no assignment has named for a while.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
from pathlib import Path
from typing import Callable

from atoll.core.archive import safe_extract
from atoll.core.errors import FailedPrecondition, InvalidArgument, NotFound
from atoll.core.logs import kv
from atoll.wire.model_store import fetch_chunks

log = logging.getLogger("atoll.agent")


_CACHED: dict[Path, tuple[int, list[str]]] = {}


def cached_names(cache_dir: Path) -> list[str]:
    """The ``sha256:`` names fully fetched into ``cache_dir`` (no fetch needed to load them).
    Listed again only when the directory changes (a fetch ends by removing its ``.part``)."""
    try:
        mtime = cache_dir.stat().st_mtime_ns
    except OSError:
        return []
    hit = _CACHED.get(cache_dir)
    if hit is None or hit[0] != mtime:
        names = sorted(f"sha256:{p.name}" for p in cache_dir.iterdir()
                       if len(p.name) == 64 and (p / ".complete").exists())
        hit = _CACHED[cache_dir] = (mtime, names)
    return list(hit[1])


async def resolve_source(source: str, *, channel, cache_dir: Path,
                         progress: Callable[[int, int], None] | None = None, token: str = "",
                         proof: str = "") -> Path:
    """A local directory (or GGUF file) for ``source`` (a path or a sha256 name fetched from the
    coordinator)."""
    if not source:
        raise InvalidArgument("empty model/adapter source")
    if not source.startswith("sha256:"):
        p = Path(source).expanduser()
        if not (p.is_dir() or p.suffix == ".gguf" and p.is_file()):      # a GGUF model may be one file
            raise NotFound(f"{source} is not a directory (or a .gguf file) on this host",
                           hint="use a path present on every host, or push it with `atoll push` and name it sha256:...")
        return p
    hexd = source.split(":", 1)[1]
    if len(hexd) != 64 or any(c not in "0123456789abcdef" for c in hexd):
        raise InvalidArgument(f"{source[:80]!r} is not a sha256 name")
    dest = cache_dir / hexd
    if (dest / ".complete").exists():
        return dest
    cache_dir.mkdir(parents=True, exist_ok=True)
    part = cache_dir / f"{hexd}.part"
    offset = part.stat().st_size if part.exists() else 0
    with open(part, "ab") as f:
        async for at, data, total in fetch_chunks(channel, source, offset, token, proof):
            if at != f.tell():
                raise FailedPrecondition(f"fetch of {source}: chunk at {at}, expected {f.tell()}")
            f.write(data)
            if progress:
                progress(at + len(data), total)
    got = await asyncio.to_thread(_sha256_of, part)
    if got != hexd:
        part.unlink(missing_ok=True)
        raise FailedPrecondition(f"checksum mismatch fetching {source}: got sha256:{got[:12]}…; retrying fetches it again")
    tmp = cache_dir / f"{hexd}.extract"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        await asyncio.to_thread(safe_extract, part, tmp)
    except InvalidArgument as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        part.unlink(missing_ok=True)
        raise InvalidArgument(f"{source[:19]}…: {exc.message}", hint=exc.hint) from None
    shutil.rmtree(dest, ignore_errors=True)
    tmp.replace(dest)
    (dest / ".complete").write_text(source + "\n")
    size = part.stat().st_size
    part.unlink(missing_ok=True)
    log.info("fetched", extra=kv(name=source[:19], bytes=size))
    return dest


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for piece in iter(lambda: f.read(1 << 20), b""):
            h.update(piece)
    return h.hexdigest()


def prune(cache_dir: Path, keep: set[str]) -> list[str]:
    """Remove fetched blobs (and partial fetches) whose ``sha256:`` name is not in ``keep``;
    returns the names removed."""
    if not cache_dir.is_dir():
        return []
    keep_hex = {k.split(":", 1)[1] for k in keep if k.startswith("sha256:")}
    gone = []
    for p in cache_dir.iterdir():
        hexd = p.name.split(".", 1)[0]
        if len(hexd) != 64 or hexd in keep_hex:
            continue
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        gone.append(f"sha256:{hexd}")
    return sorted(set(gone))
