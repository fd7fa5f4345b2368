"""Write outputs under a temporary name and rename them into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path

from astrohvae.errors import OutputError

__all__ = ["atomic_path", "check_writable_dir"]

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_writable_dir(path):
    """Raise `OutputError` unless the folder of ``path`` exists and is writable."""
    parent = Path(path).resolve().parent
    if not parent.is_dir():
        raise OutputError(path, f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"output folder {parent} is not writable")


@contextlib.contextmanager
def atomic_path(final, *, directory=False):
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception the temporary file (or folder, with ``directory=True``)
    is removed and ``final`` is left as it was, so a reader never sees a
    half-written output.
    """
    final = Path(final)
    check_writable_dir(final)
    fd_dir = final.resolve().parent
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=fd_dir))
    else:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=fd_dir)
        os.close(fd)
        tmp = Path(name)
    try:
        # mkstemp/mkdtemp create private (0600/0700) entries; give the output
        # the permissions a plain open() would have given it.
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        yield tmp
        if directory and final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        raise
