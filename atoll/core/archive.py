"""Directory archives shared by the coordinator's model store, the agent and the SDK.

``archive_dir`` makes a deterministic tar of a model or adapter directory (so the same files
always give the same ``sha256:`` name); ``safe_extract`` unpacks one, refusing anything that is
not a plain file inside the destination; ``check_archive`` is the same walk without writing.

Both read the archive as a stream, one member header at a time, and refuse it *before* a
member's data is inflated when the members' declared sizes add up to more than the caps
(:class:`Limits`): at most ``max_files`` members, at most ``max_bytes`` in all, and at most
``max_ratio`` times the archive's own size plus 1 MiB (a plain tar, what ``atoll push`` sends,
is never larger unpacked than packed; a compressed one that inflates 1,000-fold is a bomb). A
member is copied in 1 MiB pieces, never read whole into memory.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import tarfile
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Limits:
    max_files: int = 10_000
    max_bytes: int = 64 << 30
    max_ratio: float = 4.0

    def budget(self, archive_bytes: int) -> int:
        return min(self.max_bytes, int(self.max_ratio * archive_bytes) + (1 << 20))


LIMITS = Limits()


def _members(tar: tarfile.TarFile, archive_bytes: int, limits: Limits, root: Path):
    """Yield each member after checking it, and the caps so far, from its header alone."""
    budget = limits.budget(archive_bytes)
    files = total = 0
    base = str(root.resolve()) + os.sep
    for m in tar:
        target = (root / m.name).resolve()
        if not m.isfile() or m.issparse() or not str(target).startswith(base):
            raise InvalidArgument(f"archive member {m.name[:200]!r} is not a plain file inside the directory")
        files += 1
        total += m.size
        if files > limits.max_files:
            raise InvalidArgument(f"the archive holds more than {limits.max_files} files",
                                  hint="push a directory with fewer files")
        if total > budget:
            raise InvalidArgument(f"the archive unpacks to more than {budget} bytes (its files declare "
                                  f"{total} bytes so far; the archive itself is {archive_bytes} bytes)",
                                  hint=f"at most {limits.max_ratio:g}x the archive's size and "
                                       f"{limits.max_bytes} bytes in all; push an uncompressed directory")
        yield m, target


def _open(source: Path | bytes) -> tuple[tarfile.TarFile, int]:
    try:
        if isinstance(source, (bytes, bytearray)):
            return tarfile.open(fileobj=io.BytesIO(source), mode="r|*"), len(source)
        return tarfile.open(str(source), mode="r|*"), Path(source).stat().st_size
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise InvalidArgument(f"not a tar archive of a directory ({type(exc).__name__})") from None


def check_archive(source: Path | bytes, limits: Limits = LIMITS) -> int:
    """Walk an archive as :func:`safe_extract` would, writing nothing; returns its file count."""
    tar, size = _open(source)
    n = 0
    try:
        with tar:
            for _ in _members(tar, size, limits, Path("/archive-root")):
                n += 1
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise InvalidArgument(f"damaged tar archive ({type(exc).__name__}: {str(exc)[:100]})") from None
    return n


def safe_extract(source: Path | bytes, dest: Path, limits: Limits = LIMITS) -> None:
    """Unpack an archive (a file or bytes) into ``dest``, refusing absolute paths, '..', links
    and special files, and archives over ``limits``; on refusal ``dest`` may hold a part of it
    (the caller unpacks into a scratch directory)."""
    dest.mkdir(parents=True, exist_ok=True)
    tar, size = _open(source)
    try:
        with tar:
            for m, target in _members(tar, size, limits, dest):
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(m) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
    except (tarfile.TarError, EOFError) as exc:
        raise InvalidArgument(f"damaged tar archive ({type(exc).__name__}: {str(exc)[:100]})") from None
