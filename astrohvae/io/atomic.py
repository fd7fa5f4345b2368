"""Output safety: write under a temporary name, rename into place, never destroy a user's file.

This module is the one owner of what an astrohvae command may write:

* `check_output` refuses, before any work, an output that is one of the
  command's inputs (or a file inside an input folder), that is not a regular
  file (a device node, a fifo, a folder where a file is expected), and an
  existing output unless ``overwrite`` is given *and* the existing thing is a
  previous astrohvae output of the same kind (`is_astrohvae_output`).
* `atomic_path` writes under ``.NAME.XXXX.tmp`` beside the final name and
  renames it into place; a folder it replaces is renamed aside first and
  removed only after the new one is in place, and only when it is a previous
  output of the same kind: it never removes a folder it did not create.
* The temporaries of this process are registered; `install_signal_cleanup`
  (called by the command line) removes them on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import stat
import tempfile
import threading
from pathlib import Path

from astrohvae.errors import OutputError

__all__ = ["atomic_path", "check_output", "check_writable_dir", "install_signal_cleanup",
           "is_astrohvae_output", "OUTPUT_KINDS"]

# The process umask, read once (os.umask can only be read by setting it).
_UMASK = os.umask(0)
os.umask(_UMASK)

#: Temporaries (files or folders) this process is writing; removed on SIGTERM.
_LIVE = set()
_LIVE_LOCK = threading.Lock()

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Files a weights folder written by astrohvae may hold (plus ``*.png`` plots).
_WEIGHTS_FILES = {"model.safetensors", "config.json", "metrics.json", "history.json"}

OUTPUT_KINDS = ("catalog", "segmap", "png", "weights", "text")
"""Kinds of output `is_astrohvae_output` recognises."""


def _nearest_existing(path):
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_dir(path, *, create=False):
    """Raise `OutputError` unless the folder of ``path`` exists (or can be created) and is writable.

    Parameters
    ----------
    path : path
        The output file or folder.
    create : bool
        Accept a missing folder when its nearest existing ancestor is a
        writable folder (the caller creates it just before writing).
    """
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        if not create:
            raise OutputError(path, f"output folder {parent} does not exist")
        anc = _nearest_existing(parent)
        if not anc.is_dir():
            raise OutputError(path, f"{anc} is not a folder")
        parent = anc
    if not os.access(parent, os.W_OK):
        raise OutputError(path, f"output folder {parent} is not writable")


def _fits_extnames(path):
    """EXTNAMEs and primary header of a FITS file, read header by header (no data); None if not FITS."""
    try:
        with open(path, "rb") as fh:
            if fh.read(9) != b"SIMPLE  =":
                return None
        from astropy.io import fits

        with fits.open(path, memmap=True, lazy_load_hdus=True) as hdul:
            prim = hdul[0].header.copy()
            names = [str(h.header.get("EXTNAME", "")).upper() for h in hdul[1:]]
        return prim, names
    except Exception:  # noqa: BLE001 - anything unreadable is simply not ours
        return None


def is_astrohvae_output(path, kind):
    """True when ``path`` is a previous astrohvae output of ``kind``.

    Parameters
    ----------
    path : path
    kind : {'catalog', 'segmap', 'png', 'weights', 'text'}
        ``catalog``: a FITS file with a CATALOG extension and ``ASTHVVER``;
        ``segmap``: a FITS file with SEGMAP and ``ASTHVVER``; ``png``: a PNG
        whose metadata names astrohvae or matplotlib (which draws them); ``weights``: a folder holding only
        ``model.safetensors``, ``config.json`` (a JSON object),
        ``metrics.json``, ``history.json`` and ``*.png`` plots; ``text``: a
        regular text file (evaluation tables, which carry no signature).
    """
    p = Path(path)
    if kind == "weights":
        if not p.is_dir() or p.is_symlink():
            return False
        names = {q.name for q in p.iterdir()}
        if not {"model.safetensors", "config.json"} <= names:
            return False
        for q in p.iterdir():
            if not q.is_file() or not (q.name in _WEIGHTS_FILES or q.suffix == ".png"):
                return False
        try:
            return isinstance(json.loads((p / "config.json").read_text()), dict)
        except (OSError, ValueError, UnicodeDecodeError):
            return False
    if not _is_regular(p):
        return False
    if kind in ("catalog", "segmap"):
        got = _fits_extnames(p)
        if got is None:
            return False
        prim, names = got
        return "ASTHVVER" in prim and ("CATALOG" if kind == "catalog" else "SEGMAP") in names
    if kind == "png":
        try:
            with open(p, "rb") as fh:
                head = fh.read(4096)
        except OSError:
            return False
        # astrohvae draws its PNGs with matplotlib, which names itself in a tEXt chunk
        return head.startswith(_PNG_SIGNATURE) and (b"astrohvae" in head or b"Matplotlib" in head)
    if kind == "text":
        try:
            with open(p, "rb") as fh:
                head = fh.read(4096)
            head.decode("utf-8")
        except (OSError, UnicodeDecodeError):
            return False
        return b"\0" not in head
    raise ValueError(f"unknown output kind {kind!r}; choose from {', '.join(OUTPUT_KINDS)}")


def _is_regular(path):
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _what(path):
    """A few words for a thing that is not a regular file."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return "unreadable"
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def _same(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path, folder):
    """True when ``path`` is ``folder`` or lies (at any depth) inside it."""
    try:
        p = Path(os.path.realpath(path))
        f = Path(os.path.realpath(folder))
    except OSError:
        return False
    return p == f or f in p.parents


def _input_conflict(path, inputs, directory):
    """The input ``path`` would overwrite or contain, or None."""
    for inp in inputs:
        inp = Path(os.fspath(inp))
        if not inp.exists():
            continue
        if _same(path, inp):
            return inp
        if inp.is_dir() and path.exists() and _inside(path, inp):
            return inp
        if directory and _inside(inp, path):
            return inp
        if not inp.is_dir() and path.exists() and not directory:
            # an SDSS frame given alone brings its sibling bands along
            from astrohvae.io.readers import parse_frame_name

            a, b = parse_frame_name(inp), parse_frame_name(path)
            if a and b and a[1] == b[1] and _same(inp.parent, path.parent):
                return inp
    return None


def check_output(path, *, inputs=(), kind=None, overwrite=False, directory=False, create=True):
    """Refuse, with `OutputError`, an output that would destroy something astrohvae did not write.

    Parameters
    ----------
    path : path
        The output file (or folder, with ``directory=True``).
    inputs : sequence of path
        The command's inputs (files or folders, glob patterns expanded).  The
        output may not be one of them, a file inside an input folder, a
        sibling band of an input SDSS frame or (for a folder) contain one.
    kind : str, optional
        What the output is (see `is_astrohvae_output`); an existing output is
        replaced only when it is a previous astrohvae output of this kind.
        For a folder output without a kind, an existing folder must be empty.
    overwrite : bool
        Allow replacing an existing output (of ``kind``).
    directory : bool
        The output is a folder.
    create : bool
        Accept missing parent folders (created by the writer).

    Returns
    -------
    pathlib.Path
    """
    path = Path(os.fspath(path))
    hit = _input_conflict(path, inputs, directory)
    if hit is not None:
        if _same(path, hit):
            raise OutputError(path, "is an input of this command; refusing to overwrite it")
        if directory and _inside(hit, path):
            raise OutputError(path, f"holds the input {hit}; refusing to replace it")
        raise OutputError(path, f"is part of the input {hit}; refusing to overwrite it")
    if os.path.lexists(path):
        if not os.path.exists(path):
            raise OutputError(path, "is a broken symbolic link; refusing to write through it")
        if directory:
            if not path.is_dir():
                raise OutputError(path, f"exists and is {_what(path) if not _is_regular(path) else 'a file'}, "
                                        "not a folder")
            if any(path.iterdir()):
                ours = kind is not None and is_astrohvae_output(path, kind)
                if not ours:
                    raise OutputError(path, "is a folder that astrohvae did not write and is not empty; "
                                            "refusing to replace it")
                if not overwrite:
                    raise OutputError(path, "exists; use --overwrite to replace it")
        else:
            if not _is_regular(path):
                raise OutputError(path, f"is {_what(path)}, not a regular file; refusing to replace it")
            if not overwrite:
                raise OutputError(path, "exists; use --overwrite to replace it")
            if kind is not None and not is_astrohvae_output(path, kind):
                raise OutputError(path, f"exists and is not an astrohvae {kind} output; refusing to replace it")
    check_writable_dir(path, create=create)
    return path


def _remove(p):
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink()
    except OSError:
        pass


_CLEANUP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextlib.contextmanager
def _signals_blocked():
    """Hold SIGTERM/SIGHUP (in this thread) while a temporary is created and registered, or renamed."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _CLEANUP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _register(p):
    with _LIVE_LOCK:
        _LIVE.add(p)


def _unregister(p):
    with _LIVE_LOCK:
        _LIVE.discard(p)


@contextlib.contextmanager
def atomic_path(final, *, directory=False, kind=None, parents=False):
    """Yield a temporary path beside ``final``; rename it to ``final`` on success.

    On any exception (or SIGTERM, see `install_signal_cleanup`) the temporary
    file (or folder, with ``directory=True``) is removed and ``final`` is left
    as it was, so a reader never sees a half-written output.

    Parameters
    ----------
    final : path
    directory : bool
        Write a folder.  An existing non-empty ``final`` folder is replaced
        only when it is a previous astrohvae output of ``kind`` (see
        `is_astrohvae_output`): it is renamed aside, the new folder renamed
        into place, and only then the old one removed.  Otherwise
        `OutputError` is raised and nothing is touched.
    kind : str, optional
        Kind of a folder output that may be replaced.
    parents : bool
        Create missing parent folders.

    Raises
    ------
    OutputError
        ``final`` exists and is not a regular file (files) or not a previous
        output of ``kind`` (folders); or its folder cannot be written.
    """
    final = Path(final)
    if parents:
        check_writable_dir(final, create=True)
        Path(os.path.abspath(final)).parent.mkdir(parents=True, exist_ok=True)
    check_writable_dir(final)
    if os.path.lexists(final):
        if directory:
            if not final.is_dir() or final.is_symlink():
                raise OutputError(final, "exists and is not a folder; refusing to replace it")
            if any(final.iterdir()) and not (kind is not None and is_astrohvae_output(final, kind)):
                raise OutputError(final, "is a folder that astrohvae did not write and is not empty; "
                                         "refusing to replace it")
        elif os.path.exists(final) and not _is_regular(final):
            raise OutputError(final, f"is {_what(final)}, not a regular file; refusing to replace it")
    fd_dir = Path(os.path.abspath(final)).parent
    with _signals_blocked():  # a SIGTERM between creating and registering would leave it behind
        if directory:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=fd_dir))
        else:
            fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=fd_dir)
            os.close(fd)
            tmp = Path(name)
        _register(tmp)
    old = None
    try:
        # mkstemp/mkdtemp create private (0600/0700) entries; give the output
        # the permissions a plain open() would have given it.
        os.chmod(tmp, (0o777 if directory else 0o666) & ~_UMASK)
        yield tmp
        if directory and final.exists():
            if any(final.iterdir()) and not (kind is not None and is_astrohvae_output(final, kind)):
                raise OutputError(final, "is a folder that astrohvae did not write and is not empty; "
                                         "refusing to replace it")
            with _signals_blocked():  # the swap is not interrupted half-way
                old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=fd_dir))
                _register(old)
                os.replace(final, old)  # rename(2) onto the empty placeholder folder
                try:
                    os.replace(tmp, final)
                except BaseException:
                    os.replace(old, final)
                    raise
                _unregister(tmp)
        else:
            with _signals_blocked():
                os.replace(tmp, final)
                _unregister(tmp)
    except BaseException:
        _remove(tmp)
        _unregister(tmp)
        if old is not None and not old.exists():
            _unregister(old)
        raise
    finally:
        if old is not None and old.exists() and final.exists():
            shutil.rmtree(old, ignore_errors=True)
            _unregister(old)


def _cleanup_temporaries():
    with _LIVE_LOCK:
        live = list(_LIVE)
        _LIVE.clear()
    for p in live:
        if p.suffix == ".old":
            continue  # a replaced output waiting to go back or be removed: leave it for the unwinding
        _remove(p)


def install_signal_cleanup(signals=_CLEANUP_SIGNALS):
    """On these signals, remove this process's temporaries and exit with status 128 + signal number.

    The exit is a `SystemExit` raised in the main thread, so ``finally``
    blocks (temporary folders, locks) run too.  Does nothing outside the
    main thread.
    """
    def handler(signum, frame):
        _cleanup_temporaries()
        raise SystemExit(128 + signum)

    for s in signals:
        with contextlib.suppress(ValueError, OSError):
            signal.signal(s, handler)
