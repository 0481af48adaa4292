"""Whether a failed write failed because of the disk: full, over a quota or a file-size limit, failing, or
read-only. Then the write is transient (RetryableError): the indexer pauses with the reason and resumes when
space returns, instead of dead-lettering good events one by one.

LanceDB's Python binding raises every error of its Rust core as a plain RuntimeError whose only detail is
its message, which is no API (kernel/errors.py: never classify by message text). So the embedded index asks
the disk itself, by errno: after a failed write it writes a probe file beside its data and reads free space.
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

#: errno values that mean the disk, not the data.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO, errno.EROFS})
#: The probe: this many bytes written (and removed) beside the data, as a write of a batch would.
PROBE_BYTES = 256 * 1024
#: Less free space than this on the data's filesystem counts as full: a write of a large batch (a few
#: MB of vectors and text) fails there although the small probe still fits.
MIN_FREE_BYTES = 64 * 1024 * 1024


def trouble(directory: Path) -> str | None:
    """Why writes into `directory` fail now (errno name and words), or None when the disk takes a write."""
    probe = directory / f".ragbus-disk-probe-{uuid.uuid4().hex}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            left = PROBE_BYTES
            while left:  # a write near a size limit is short first; the next one fails with the errno
                left -= os.write(fd, b"\0" * left)
        finally:
            os.close(fd)
    except OSError as exc:
        if exc.errno in DISK_ERRNOS:
            return f"{errno.errorcode.get(exc.errno or 0, exc.errno)}: {exc.strerror} (writing in {directory})"
        return None  # not the disk (e.g. permissions): the write's own error surfaces as it is
    finally:
        probe.unlink(missing_ok=True)
    stats = os.statvfs(directory)
    free = stats.f_bavail * stats.f_frsize
    if free < MIN_FREE_BYTES:
        return f"ENOSPC: {free // 1024} KiB free on the filesystem of {directory}"
    return None
