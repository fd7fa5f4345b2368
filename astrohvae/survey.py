"""Many fields on dask.distributed: ``run_survey`` maps `astrohvae.pipeline.run_field` over them.

The model is loaded once per worker process, a bounded number of fields is in
flight, and the output folder is resumable:

* ``OUT/<field>.fits`` exists only when complete (written under a temporary
  name and renamed), so a rerun skips it;
* ``OUT/survey.json`` (rewritten atomically after every field) records each
  field's status, row count, seconds and, for failures, the one-line error.
  A rerun retries failed fields (their input may have been fixed).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.table import Table

from astrohvae import __version__
from astrohvae.errors import AstroHVAEError, InputError, OutputError
from astrohvae.io.atomic import atomic_path
from astrohvae.pipeline import (DEFAULT_NSIGMA, _one_line, default_output, field_name, load_classifier,
                                load_segmenter, run_field)

__all__ = ["SurveyResult", "cost_hint", "run_survey"]


# ----------------------------------------------------------------------------- cost hint
def _primary_header(path, max_blocks=40):
    """The first FITS header of ``path`` (plain, .gz or .bz2), read block by block.

    Only the header's own 2880-byte blocks are decompressed, not the image.
    """
    import bz2
    import gzip

    from astropy.io import fits

    name = str(path)
    opener = bz2.open if name.endswith(".bz2") else gzip.open if name.endswith(".gz") else open
    with opener(name, "rb") as fh:
        raw = b""
        for _ in range(max_blocks):
            block = fh.read(2880)
            if len(block) < 2880:
                return None
            raw += block
            cards = [block[i:i + 80] for i in range(0, 2880, 80)]
            if any(c.startswith(b"END") and not c[3:].strip() for c in cards):
                return fits.Header.fromstring(raw.decode("ascii", "replace"))
    return None


COST_HINT_MAX_FIELDS = 500
"""`run_survey` orders the fields by `cost_hint` when there are at most this many to do."""


def cost_hint(path):
    """Absolute Galactic latitude of a field (degrees), or None if unknown.

    Star counts, and with them the sources of a field and its run time, rise
    steeply towards the Galactic plane (a field at |b| ~ 1 deg has ~10x the
    sources of one at high latitude); `run_survey` submits low-latitude fields
    first so that the longest tasks do not start last.  Read from the
    reference-band header's WCS only; any failure gives None.
    """
    p = Path(str(path))
    try:
        if p.is_dir():
            cands = sorted(p.glob("frame-r-*.fits*")) or sorted(p.glob("*.fits*"))
            if not cands:
                return None
            p = cands[0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from astropy.coordinates import SkyCoord
            from astropy.wcs import WCS

            hdr = _primary_header(p)
            if hdr is None:
                return None
            wcs = WCS(hdr, naxis=2)
            if not wcs.has_celestial:
                return None
            ny, nx = int(hdr.get("NAXIS2", 1)), int(hdr.get("NAXIS1", 1))
            sky = wcs.pixel_to_world(nx / 2, ny / 2)
            if not isinstance(sky, SkyCoord):
                return None
            return float(abs(sky.galactic.b.deg))
    except Exception:  # noqa: BLE001 - a hint only; the task itself reports bad input
        return None



# ----------------------------------------------------------------------------- survey
def _peak_rss_mb():
    """Peak resident memory of this process (MB).

    Linux's ``VmHWM`` (this process image's own high-water mark); not
    ``ru_maxrss``, which a spawned worker inherits across exec from the
    process that started it.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _survey_task(inp, out, opts):
    """One survey field on a worker; never raises (failures are returned)."""
    t0, c0 = time.perf_counter(), time.process_time()
    name = field_name(inp)
    try:
        try:
            import torch

            torch.set_num_threads(int(opts.get("threads", 1)))
        except ImportError:
            pass
        clf = load_classifier(opts.get("weights"), opts.get("device", "cpu"))
        seg = load_segmenter(opts.get("segmenter", "auto"), opts.get("device", "cpu"))
        res = run_field(inp, out, classifier=clf, segmenter=seg, batch_size=opts.get("batch_size", 256),
                        nsigma=opts.get("nsigma", DEFAULT_NSIGMA), preview=opts.get("preview", False),
                        threads=int(opts.get("threads", 1)))
        rec = {"status": "done", "rows": res.rows, "n_star": res.n_star, "n_galaxy": res.n_galaxy,
               "error": "", "timings": {k: round(v, 3) for k, v in res.timings.items()}}
    except AstroHVAEError as exc:
        rec = {"status": "failed", "error": _one_line(str(exc))}
    except Exception as exc:  # noqa: BLE001 - one bad field must not stop the survey
        rec = {"status": "failed", "error": _one_line(f"{inp}: {type(exc).__name__}: {exc}")}
    rec.update({"field": name, "input": str(inp), "catalog": str(out),
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),  # the worker process, all its threads
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "worker": f"{socket.gethostname()}:{os.getpid()}"})
    return rec


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _survey_lock(out_dir):
    lock = out_dir / ".survey.lock"
    me = f"{socket.gethostname()} {os.getpid()}"
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            host, pid = lock.read_text().split()
            stale = host == socket.gethostname() and not _pid_alive(int(pid))
        except (ValueError, OSError):
            stale = True
        if not stale:
            raise OutputError(out_dir, f"another survey ({host} pid {pid}) is writing here; "
                                       f"remove {lock.name} if it is dead")
        lock.unlink(missing_ok=True)
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    with os.fdopen(fd, "w") as fh:
        fh.write(me)
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _write_ledger(path, ledger):
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))


def _read_ledger(path):
    try:
        data = json.loads(Path(path).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("fields"), dict) else None
    except (OSError, ValueError):
        return None


def _summary_table(records):
    cols = ["field", "status", "rows", "n_star", "n_galaxy", "seconds", "peak_rss_mb", "error"]
    rows = []
    for r in records:
        rows.append([r.get("field", ""), r.get("status", ""), int(r.get("rows", -1) if r.get("rows") is not None else -1),
                     int(r.get("n_star", -1) if r.get("n_star") is not None else -1),
                     int(r.get("n_galaxy", -1) if r.get("n_galaxy") is not None else -1),
                     float(r.get("seconds", 0.0) or 0.0), float(r.get("peak_rss_mb", 0.0) or 0.0),
                     r.get("error", "") or ""])
    if not rows:
        return Table(names=cols, dtype=["U1", "U1", "i8", "i8", "i8", "f8", "f8", "U1"])
    return Table(rows=rows, names=cols)


@dataclass
class SurveyResult:
    """What `run_survey` did."""

    table: Table
    ledger: Path
    wall_seconds: float
    n_workers: int

    @property
    def n_failed(self):
        return int(np.sum(self.table["status"] == "failed")) if len(self.table) else 0


def run_survey(inputs, out_dir, *, scheduler=None, workers=None, weights=None, device="cpu",
               batch_size=256, segmenter="auto", nsigma=DEFAULT_NSIGMA, memory_limit="4GiB",
               threads_per_worker=1, progress=True, preview=False, max_in_flight=None,
               processes=True):
    """Catalogue many fields on dask.distributed, resumably.

    Parameters
    ----------
    inputs : sequence of path
        One entry per field (an SDSS field folder, a MEF/cube file, ...).
    out_dir : path
        Output folder (created if missing): ``<field>.cat.fits`` per field and
        ``survey.json`` (the ledger).
    scheduler : str, optional
        Address of a running dask scheduler; default a `LocalCluster`.
    workers : int, optional
        Worker processes of the LocalCluster (default 1).
    memory_limit : str
        Memory limit per LocalCluster worker (dask pauses/restarts a worker
        that exceeds it).  Memory is bounded per worker because each task
        holds one field and at most ``max_in_flight`` (default 2 × workers)
        fields are submitted at a time.  Fields are submitted in order of
        increasing Galactic latitude (`cost_hint`, for up to
        `COST_HINT_MAX_FIELDS` fields): the crowded, slow fields start first,
        so that no worker is left with one long field at the end.
    processes : bool
        LocalCluster worker processes (True) or threads in this process.

    Returns
    -------
    SurveyResult
        ``table``: one row per input (status ``done``, ``skipped`` = already
        complete, or ``failed`` with the error).
    """
    import dask
    from dask.distributed import Client, LocalCluster, as_completed

    from astrohvae.io.catalog import is_complete

    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot create output folder ({exc.strerror or exc})")
    if not os.access(out_dir, os.W_OK):
        raise OutputError(out_dir, "output folder is not writable")
    ledger_path = out_dir / "survey.json"

    plan, names = [], {}
    for inp in inputs:
        name = field_name(inp)
        if name in names:
            raise InputError(inp, f"field name {name!r} also used by {names[name]}")
        names[name] = inp
        plan.append((name, str(inp), default_output(name, out_dir)))

    opts = {"weights": str(weights) if weights else None, "device": device, "batch_size": batch_size,
            "segmenter": segmenter if isinstance(segmenter, str) else "auto", "nsigma": nsigma,
            "threads": threads_per_worker, "preview": preview}

    with _survey_lock(out_dir):
        old = _read_ledger(ledger_path) or {"fields": {}}
        ledger = {"version": __version__, "out": str(out_dir), "fields": dict(old["fields"])}
        # temporary files of a killed run can never become catalogues: remove them
        for name, _, out in plan:
            for stale in out_dir.glob(f".{out.name}.*.tmp"):
                stale.unlink(missing_ok=True)
        records, todo = {}, []
        for name, inp, out in plan:
            if is_complete(out):
                prev = ledger["fields"].get(name, {})
                rec = dict(prev) if prev.get("status") in ("done", "skipped") else {}
                rec.update({"field": name, "input": inp, "catalog": str(out), "status": "skipped",
                            "error": ""})
                if "rows" not in rec:
                    rec["rows"] = _catalog_rows(out)
                records[name] = rec
            else:
                todo.append((name, inp, out))

        # longest first (LPT): crowded low-latitude fields start at once.  The
        # order matters for the tail of a short survey; a long one balances
        # itself, and its headers are not read (~30 ms a field) before starting
        if len(todo) <= COST_HINT_MAX_FIELDS:
            todo.sort(key=lambda item: (lambda b: 90.0 if b is None else b)(cost_hint(item[1])))
        n_workers = 0
        if todo:
            if scheduler:
                client = Client(scheduler)
                cluster = None
            else:
                # worker-saturation 1.0: a worker holds one field at a time and the
                # others wait at the scheduler, so a field is never queued behind a
                # long one on a busy worker while another worker idles (dask's 1.1
                # gives a one-thread worker two)
                with dask.config.set({"distributed.nanny.pre-spawn-environ": _worker_environ(),
                                      "distributed.scheduler.worker-saturation": 1.0,
                                      "distributed.worker.memory.monitor-interval": "1s",
                                      "distributed.admin.system-monitor.interval": "2s"}):
                    cluster = LocalCluster(n_workers=int(workers or 1), threads_per_worker=threads_per_worker,
                                           processes=processes, memory_limit=memory_limit,
                                           dashboard_address=None, silence_logs=50)
                client = Client(cluster)
            try:
                n_workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
                window = int(max_in_flight or 2 * n_workers)
                bar = _progress(len(todo), progress)
                pending = iter(todo)
                ac = as_completed()

                def submit_next():
                    nxt = next(pending, None)
                    if nxt is not None:
                        name, inp, out = nxt
                        ac.add(client.submit(_survey_task, inp, str(out), opts, key=f"field-{name}-{time.time_ns()}",
                                             pure=False))

                for _ in range(min(window, len(todo))):
                    submit_next()
                for fut in ac:
                    try:
                        rec = fut.result()
                    except Exception as exc:  # noqa: BLE001 - e.g. a worker killed by memory limits
                        rec = {"status": "failed", "error": _one_line(f"worker lost: {type(exc).__name__}: {exc}"),
                               "field": _name_of_key(fut.key, todo)}
                    fut.release()
                    records[rec["field"]] = rec
                    ledger["fields"][rec["field"]] = rec
                    _write_ledger(ledger_path, ledger)
                    bar.update(1)
                    bar.set_postfix_str(f"{rec['field']} {rec['status']}")
                    submit_next()
                bar.close()
            finally:
                client.close()
                if cluster is not None:
                    cluster.close()
        for name, rec in records.items():
            ledger["fields"][name] = rec
        ledger["last_run"] = {"wall_seconds": round(time.perf_counter() - t_start, 3), "workers": n_workers,
                              "processed": len(todo), "skipped": len(plan) - len(todo)}
        _write_ledger(ledger_path, ledger)
    ordered = [records[name] for name, _, _ in plan]
    return SurveyResult(_summary_table(ordered), ledger_path, time.perf_counter() - t_start, n_workers)


def _worker_environ():
    """Environment of the LocalCluster's worker processes: dask's, without MALLOC_TRIM_THRESHOLD_.

    dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` in its workers to hand freed
    memory back to the OS at once.  Setting it switches off glibc's dynamic
    mmap threshold, so every array above 128 kB is mmap'ed, page-faulted in
    and unmapped again: that doubled the CPU time of a field in a worker
    (2.65 -> 5.05 s on 001043-5-0025).  The single-thread variables
    (``OMP_NUM_THREADS=1`` ...) are kept.  Workers of a cluster started
    elsewhere (``--scheduler``) should likewise be started without it.
    """
    import dask

    env = dict(dask.config.get("distributed.nanny.pre-spawn-environ", {}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def _name_of_key(key, todo):
    for name, _, _ in todo:
        if str(key).startswith(f"field-{name}-"):
            return name
    return str(key)


def _catalog_rows(path):
    from astropy.io import fits

    try:
        return int(fits.getval(path, "NSOURCES", ext=0))
    except Exception:  # noqa: BLE001
        return -1


def _progress(total, enabled):
    from tqdm import tqdm

    return tqdm(total=total, desc="fields", unit="field", file=sys.stderr, disable=not enabled,
                dynamic_ncols=True)
