"""Reading and checking the inputs of the pipeline commands."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np

from astrohvae import BANDS, STAMP_SIZE
from astrohvae.errors import AstroHVAEError, InputError

__all__ = ['check_field', 'input_paths', 'example_field', 'field_name', 'read_input']

DEFAULT_NSIGMA = 1.5
EXAMPLE_SEED = 2024
EXAMPLE_SIZE = (1024, 744)


# ----------------------------------------------------------------------------- inputs
_FITS_SUFFIX = re.compile(r"(\.fits|\.fit|\.fts)(\.bz2|\.gz|\.fz)?$", re.IGNORECASE)


def field_name(path):
    """Short name of a field input, known without reading it.

    A folder gives its own name (``001035-6-0017``); an SDSS frame gives
    ``RUN-CAMCOL-FIELD``; any other file its name without the FITS suffixes.
    """
    p = Path(str(path))
    m = re.match(r"frame-[ugriz]-(\d{6}-\d-\d{4})", p.name)
    if m:
        return m.group(1)
    if p.is_dir():
        return p.resolve().name
    return _FITS_SUFFIX.sub("", p.name) or p.name


def read_input(path, threads=None):
    """``read_field(path, threads=threads)`` with every failure turned into a one-line `InputError`."""
    from astrohvae.io.readers import read_field

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            field = read_field(path, threads=threads)
    except AstroHVAEError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - a reader bug or odd file is still bad input
        raise InputError(path, one_line(f"cannot read field ({type(exc).__name__}: {exc})"))
    return field


def input_paths(path):
    """The existing paths an input argument names (a path, a glob pattern or a list of them)."""
    import glob as _glob

    items = [path] if isinstance(path, (str, os.PathLike)) else list(path or [])
    found = []
    for item in items:
        text = os.fspath(item)
        if os.path.lexists(text):
            found.append(Path(text))
        else:
            found.extend(Path(m) for m in sorted(_glob.glob(text)))
    return found


def check_nsigma(nsigma):
    """A detection threshold must be a finite number > 0."""
    try:
        ok = np.isfinite(float(nsigma)) and float(nsigma) > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise InputError("--nsigma", f"{nsigma!r} is not a finite number > 0")


def one_line(text, limit=300):
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def example_field(seed=EXAMPLE_SEED, size=EXAMPLE_SIZE):
    """The embedded example: a simulated SDSS-like field made with a fixed seed."""
    from astrohvae.simulate.field import simulate_field

    sim = simulate_field(seed, size=size)
    return sim.field


MIN_FIELD_SIDE = STAMP_SIZE
"""Smallest field side (pixels) `run_field` accepts: one stamp (the segmenter's windows need it)."""


def check_field(field, path):
    """Raise `InputError` (naming ``path``) unless ``field`` is five bands of at least `MIN_FIELD_SIDE` px with valid pixels."""
    if field.data.ndim != 3 or field.data.shape[0] != len(BANDS):
        raise InputError(path, f"expected {len(BANDS)} bands, got array of shape {field.data.shape}")
    if field.data.shape[1] < MIN_FIELD_SIDE or field.data.shape[2] < MIN_FIELD_SIDE:
        raise InputError(path, f"field of {field.data.shape[2]}x{field.data.shape[1]} pixels is too small "
                               f"(at least {MIN_FIELD_SIDE}x{MIN_FIELD_SIDE}, one stamp)")
    if field.mask.all():
        raise InputError(path, "no valid pixels (all NaN/inf or masked)")
    ref = field.mask[field.ref_index]
    if ref.all():
        raise InputError(path, "reference band r has no valid pixels")
