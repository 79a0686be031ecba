"""Directory archives shared by the coordinator's model store, the agent and the SDK.

``archive_dir`` makes a deterministic tar of a model or adapter directory (so the same files
always give the same ``sha256:`` name); ``safe_extract`` unpacks one, refusing anything that is
not a plain file inside the destination.
"""

from __future__ import annotations

import io
import os
import re
import tarfile
from pathlib import Path

from atoll.core.errors import InvalidArgument

_NAME = re.compile(r"^sha256:[0-9a-f]{64}$")


def archive_dir(path: str | Path) -> bytes:
    """A deterministic tar of a directory (sorted names, zeroed times and owners)."""
    root = Path(path)
    if not root.is_dir():
        raise InvalidArgument(f"{root} is not a directory", hint="give a model or adapter directory")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for p in sorted(root.rglob("*")):
            if not p.is_file() or p.is_symlink():
                continue
            info = tarfile.TarInfo(str(p.relative_to(root)))
            info.size = p.stat().st_size
            info.mtime, info.uid, info.gid, info.uname, info.gname, info.mode = 0, 0, 0, "", "", 0o644
            with open(p, "rb") as f:
                tar.addfile(info, f)
    return buf.getvalue()


def check_name(name: str) -> str:
    if not _NAME.match(name or ""):
        raise InvalidArgument(f"{name[:80]!r} is not a content-addressed name",
                              hint="names look like sha256:<64 hex digits> (see `atoll push`)")
    return name


def safe_extract(data: bytes, dest: Path) -> None:
    """Unpack an archive, refusing absolute paths, '..' and links."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for m in tar.getmembers():
            target = (dest / m.name).resolve()
            if not m.isfile() or not str(target).startswith(str(dest.resolve()) + os.sep):
                raise InvalidArgument(f"archive member {m.name!r} is not a plain file inside the directory")
        for m in tar.getmembers():
            target = dest / m.name
            target.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(m) as src, open(target, "wb") as out:
                out.write(src.read())
