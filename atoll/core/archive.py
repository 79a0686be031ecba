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

What tarfile itself may read is bounded too, before it reads it. A gzip, bzip2 or xz archive is
inflated here (:class:`_TarStream`), never by tarfile, a piece at a time: tarfile sees a
forward-only stream that answers no single read of more than 1 MiB (or ``max_header_bytes``) and
that ends with a refusal once it has produced more than the unpacked-size budget plus the room
headers take. The extended headers that come before a member (PAX ``x``/``g``, GNU long names
``L``/``K``), which tarfile reads whole into memory, are checked from their 512-byte header
(:class:`_Header`): at most ``max_header_bytes`` declared for one member, at most 8 of them, at
most ``max_headers_bytes`` in the whole archive and 8 KiB of global (``g``) ones; GNU sparse
members are refused from their header. Members already walked are dropped, so memory holds one
member's headers at a time.
"""

from __future__ import annotations

import bz2
import errno
import io
import lzma
import os
import re
import shutil
import tarfile
import zlib
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
    max_header_bytes: int = 1 << 20       # the extended headers (PAX, GNU long names) of one member
    max_headers_bytes: int = 16 << 20     # ... and of the whole archive

    def budget(self, archive_bytes: int) -> int:
        return min(self.max_bytes, int(self.max_ratio * archive_bytes) + (1 << 20))

    def stream_budget(self, archive_bytes: int) -> int:
        """The most bytes of tar stream an archive may inflate to: the members' data, their
        extended headers, and for each member its header blocks and padding."""
        return self.budget(archive_bytes) + self.max_headers_bytes + (self.max_files + 2) * _HEADER_ROOM


LIMITS = Limits()

_MAX_CHAIN = 8                 # extended headers before one member (pax, global pax, long name, long link)
_MAX_GLOBAL = 8 << 10          # global pax headers (``g``) in all: each later member copies them
_HEADER_ROOM = (_MAX_CHAIN + 1) * 2 * tarfile.BLOCKSIZE      # header blocks and padding of one member
_READ = 1 << 20                # the largest single read tarfile is answered (a member is copied in 1 MiB pieces)
_CHUNK = 64 << 10              # compressed input read at a time
_EXTENDED = {tarfile.XHDTYPE: "PAX", tarfile.XGLTYPE: "global PAX", tarfile.SOLARIS_XHDTYPE: "PAX",
             tarfile.GNUTYPE_LONGNAME: "GNU long name", tarfile.GNUTYPE_LONGLINK: "GNU long link"}
_HINT = "a model or adapter directory has no file names or attributes this long; push the directory with `atoll push`"
# What a damaged archive makes tarfile raise, besides TarError: EOFError, ValueError (an int()
# of a malformed field, a bad encoding), OverflowError.
_DAMAGED = (tarfile.TarError, EOFError, ValueError, OverflowError)
# Errors writing a member that come from the archive's names (a file where a directory goes, a name
# the file system refuses), not from the host (a full disk, an I/O error).
_NAME_ERRNOS = {errno.ENAMETOOLONG, errno.EISDIR, errno.ENOTDIR, errno.EEXIST, errno.ELOOP, errno.EILSEQ,
                errno.EINVAL}


def _not_plain(name: str) -> InvalidArgument:
    return InvalidArgument(f"archive member {name[:200]!r} is not a plain file inside the directory")


class _Guard:
    """Counts the extended headers tarfile is about to read, from their 512-byte header."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.chain = self.chain_bytes = self.total = self.glob = 0

    def header(self, h: tarfile.TarInfo) -> None:
        if h.type == tarfile.GNUTYPE_SPARSE:
            raise _not_plain(h.name)
        kind = _EXTENDED.get(h.type)
        if kind is None:                       # a member's own header: the next one starts a new chain
            self.chain = self.chain_bytes = 0
            return
        lim = self.limits
        if h.size < 0:
            raise InvalidArgument(f"an extended header ({kind}) in the archive declares a negative size ({h.size})")
        self.chain += 1
        self.chain_bytes += h.size
        self.total += h.size
        self.glob += h.size if h.type == tarfile.XGLTYPE else 0
        if self.chain_bytes > lim.max_header_bytes:
            raise InvalidArgument(f"an archive member's extended headers ({kind}) declare {self.chain_bytes} bytes; "
                                  f"at most {lim.max_header_bytes} are read for one member", hint=_HINT)
        if self.chain > _MAX_CHAIN:
            raise InvalidArgument(f"an archive member has more than {_MAX_CHAIN} extended headers "
                                  f"(PAX or GNU long name)", hint=_HINT)
        if self.total > lim.max_headers_bytes:
            raise InvalidArgument(f"the archive's extended headers (PAX or GNU long name) declare more than "
                                  f"{lim.max_headers_bytes} bytes in all", hint=_HINT)
        if self.glob > _MAX_GLOBAL:
            raise InvalidArgument(f"the archive's global PAX headers declare more than {_MAX_GLOBAL} bytes", hint=_HINT)


class _Header(tarfile.TarInfo):
    """tarfile's member header, checked by the reader's :class:`_Guard` before tarfile reads
    what it declares; GNU sparse files (old and PAX forms) are refused before their maps are read."""

    def _proc_member(self, tarfile):
        tarfile.guard.header(self)
        return super()._proc_member(tarfile)

    def _proc_gnusparse_00(self, next, *args):
        raise _not_plain(next.name)

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00


class _Reader(tarfile.TarFile):
    tarinfo = _Header

    def __init__(self, stream: _TarStream, limits: Limits):
        self.guard = _Guard(limits)
        super().__init__(fileobj=stream, mode="r")


def _compression(head: bytes) -> str | None:
    """The compression an archive's first bytes name, as tarfile's "r|*" tells them apart."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "bzip2"
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return "xz"
    return None


class _TarStream:
    """The tar stream an archive holds, as tarfile reads it (read, forward seek, tell).

    A compressed archive (gzip, bzip2, xz; concatenated streams too) is inflated here a piece at
    a time. No read of more than ``max_read`` bytes is answered, nor a read of everything, so a
    header declaring a huge payload is refused before anything is allocated; once more than
    ``max_total`` bytes have been produced the stream ends with a refusal. Seeking forward reads
    and drops; seeking back is refused (tarfile's walk never does)."""

    def __init__(self, raw, max_read: int, max_total: int):
        self._raw, self._max_read, self._max_total = raw, max_read, max_total
        self.pos = self._made = 0
        head = raw.read(10)
        raw.seek(0)
        self._kind = _compression(head)
        self._magic = head[:3]
        self._in = b""
        self._d = self._decompressor() if self._kind else None

    def _decompressor(self):
        if self._kind == "gzip":
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        return bz2.BZ2Decompressor() if self._kind == "bzip2" else lzma.LZMADecompressor()

    def _produce(self, n: int) -> bytes:
        """At most ``n`` (> 0) bytes of the tar stream; b"" at its end."""
        if self._d is None:
            return self._raw.read(n)
        while True:
            d = self._d
            if d.eof:                          # another stream may follow (as gzip -d reads them)
                rest = d.unused_data or self._in or self._raw.read(_CHUNK)
                self._in = b""
                if not rest.startswith(self._magic):
                    return b""
                self._d, self._in = self._decompressor(), rest
                continue
            data, self._in, ran_dry = self._in, b"", False
            if not data and (self._kind == "gzip" or d.needs_input):
                data = self._raw.read(_CHUNK)
                ran_dry = not data
            out = d.decompress(data, n)
            if self._kind == "gzip":
                self._in = d.unconsumed_tail
            if out:
                return out
            if ran_dry:                        # truncated: tarfile reports the short read
                return b""

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0 or n > self._max_read:
            raise InvalidArgument(f"the archive asks to read {'all of it' if n is None or n < 0 else n} bytes "
                                  f"at once; at most {self._max_read} are read at a time", hint=_HINT)
        parts, got = [], 0
        try:
            while got < n:
                piece = self._produce(n - got)
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise tarfile.ReadError(f"invalid {self._kind or 'tar'} data "
                                    f"({type(exc).__name__}: {str(exc)[:80]})") from None
        self.pos += got
        self._made += got
        if self._made > self._max_total:
            raise InvalidArgument(f"the archive inflates to more than {self._max_total} bytes of tar stream",
                                  hint="push an uncompressed directory with `atoll push`")
        return b"".join(parts)

    def seek(self, pos: int, whence: int = 0) -> int:
        if whence != 0 or pos < self.pos:
            raise tarfile.StreamError("the archive is read forward only")
        while self.pos < pos:
            if not self.read(min(pos - self.pos, self._max_read)):
                self.pos = pos                 # past the end: the next read returns nothing
        return self.pos

    def tell(self) -> int:
        return self.pos


def _members(tar: _Reader, archive_bytes: int, limits: Limits, root: Path):
    """Yield each member after checking it, and the caps so far, from its header alone."""
    budget = limits.budget(archive_bytes)
    files = total = 0
    base = str(root.resolve()) + os.sep
    while (m := tar.next()) is not None:
        tar.members.clear()                    # walked once: keep no member's headers
        name = os.fsencode(m.name)
        if len(name) > 4096 or any(len(part) > 255 for part in name.split(b"/")):
            raise InvalidArgument(f"archive member name {m.name[:200]!r} is too long ({len(name)} bytes; "
                                  f"at most 255 a component, 4096 in all)", hint=_HINT)
        if b"\0" in name or not m.isfile() or m.issparse() or m.size < 0:
            raise _not_plain(m.name)
        target = (root / m.name).resolve()
        if not str(target).startswith(base):
            raise _not_plain(m.name)
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


class _Open:
    """``with _Open(source, limits) as (tar, size)``: the archive's reader; closes the source."""

    def __init__(self, source: Path | bytes, limits: Limits):
        self.source, self.limits, self.raw = source, limits, None

    def __enter__(self) -> tuple[_Reader, int]:
        try:
            if isinstance(self.source, (bytes, bytearray)):
                self.raw, size = io.BytesIO(self.source), len(self.source)
            else:
                self.raw = open(self.source, "rb")
                size = os.fstat(self.raw.fileno()).st_size
            stream = _TarStream(self.raw, max(_READ, self.limits.max_header_bytes + tarfile.BLOCKSIZE),
                                self.limits.stream_budget(size))
            return _Reader(stream, self.limits), size
        except (*_DAMAGED, OSError) as exc:
            self.__exit__()
            raise InvalidArgument(f"not a tar archive of a directory ({type(exc).__name__})") from None
        except BaseException:
            self.__exit__()
            raise

    def __exit__(self, *exc) -> None:
        if self.raw is not None:
            self.raw.close()


def check_archive(source: Path | bytes, limits: Limits = LIMITS) -> int:
    """Walk an archive as :func:`safe_extract` would, writing nothing; returns its file count."""
    n = 0
    with _Open(source, limits) as (tar, size):
        try:
            for _ in _members(tar, size, limits, Path("/archive-root")):
                n += 1
        except _DAMAGED as exc:
            raise InvalidArgument(f"damaged tar archive ({type(exc).__name__}: {str(exc)[:100]})") from None
    return n


def safe_extract(source: Path | bytes, dest: Path, limits: Limits = LIMITS) -> None:
    """Unpack an archive (a file or bytes) into ``dest``, refusing absolute paths, '..', links
    and special files, and archives over ``limits``; on refusal ``dest`` may hold a part of it
    (the caller unpacks into a scratch directory). A member the file system refuses for its
    name (too long, a file where a directory goes) is refused too; a host's own failure (a full
    disk) is raised as the OSError it is."""
    dest.mkdir(parents=True, exist_ok=True)
    with _Open(source, limits) as (tar, size):
        try:
            for m, target in _members(tar, size, limits, dest):
                try:
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with tar.extractfile(m) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                except OSError as exc:
                    if exc.errno not in _NAME_ERRNOS:
                        raise
                    raise InvalidArgument(f"archive member {m.name[:200]!r} cannot be written "
                                          f"({exc.strerror})", hint="a directory's files unpack as they were; "
                                                                   "push the directory with `atoll push`") from None
        except _DAMAGED as exc:
            raise InvalidArgument(f"damaged tar archive ({type(exc).__name__}: {str(exc)[:100]})") from None
