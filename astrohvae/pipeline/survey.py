"""Many fields on dask.distributed: ``run_survey`` maps `astrohvae.pipeline.field.run_field` over them.

The model is loaded once per worker process, a bounded number of fields is in
flight, and the output folder is resumable:

* ``OUT/<field>.cat.fits`` exists only when complete (written under a
  temporary name and renamed), so a rerun skips it (unless its ``MODELSHA``
  names other weights);
* ``OUT/survey.json`` (rewritten atomically every `LEDGER_INTERVAL` seconds
  while fields finish) records each field's status, row count, seconds,
  worker and, for failures, the one-line error.  A rerun retries failed
  fields (their input may have been fixed);
* ``OUT/survey-catalogue.parquet`` and ``.fits``: every field's rows in one
  table with a ``primary`` flag for sources seen by two overlapping fields
  (`combine_catalogues`).

Workers come from a `LocalCluster`, a running scheduler (`connect`) or batch
jobs (`jobqueue_cluster`); a field whose worker dies is restarted on another
one a bounded number of times (``retries``).
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
from astrohvae.pipeline.combine import COMBINED_STEM, combine_catalogues
from astrohvae.pipeline.field import default_output, run_field
from astrohvae.pipeline.inputs import DEFAULT_NSIGMA, field_name, one_line
from astrohvae.pipeline.loading import load_classifier, load_segmenter

__all__ = ['SurveyResult', 'connect', 'cost_hint', 'jobqueue_cluster', 'run_survey']

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


def _worker_address():
    """This worker's dask address (``tcp://host:port``), or ``host:pid`` outside a worker."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def _check_visible(inp, out):
    """`InputError`/`OutputError` when this machine cannot see the field or the output folder.

    The client resolves every path to an absolute one; a worker on another
    machine (or in a container) may still not see it: say which worker and
    which path, in one line.
    """
    where = f"not visible on worker {_worker_address()} ({socket.gethostname()})"
    if not _visible(inp):
        raise InputError(inp, where)
    folder = os.path.dirname(out)
    if not os.path.isdir(folder):
        raise OutputError(folder, where)


def _visible(inp):
    """Whether the input ``inp`` (a path or a glob of frames) can be seen here."""
    import glob

    return os.path.exists(os.path.dirname(inp) if glob.has_magic(inp) else inp)


def survey_task(inp, out, opts):
    """One survey field on a worker; never raises (failures are returned)."""
    t0, c0, started = time.perf_counter(), time.process_time(), time.time()
    name = field_name(inp)
    try:
        _check_visible(inp, out)
        try:
            import torch

            torch.set_num_threads(int(opts.get("threads", 1)))
        except ImportError:
            pass
        import dask

        clf = load_classifier(opts.get("weights"), opts.get("device", "cpu"))
        seg = load_segmenter(opts.get("segmenter", "auto"), opts.get("device", "cpu"), isophote=opts.get("isophote"))
        # any dask computation inside the field stays in this task: on a worker, a compute()
        # without a scheduler goes to the cluster, and its Client.get secedes from the worker's
        # thread, so that the worker starts another field alongside this one (seen: two fields at
        # once on a one-thread worker, peak memory 1.96 instead of 1.67 GB)
        local = "synchronous" if int(opts.get("threads", 1)) <= 1 else "threads"
        with dask.config.set(scheduler=local):
            res = run_field(inp, out, classifier=clf, segmenter=seg, batch_size=opts.get("batch_size", 256),
                            nsigma=opts.get("nsigma", DEFAULT_NSIGMA), preview=opts.get("preview", False),
                            threads=int(opts.get("threads", 1)), regions=opts.get("regions", False))
        rec = {"status": "done", "rows": res.rows, "n_star": res.n_star, "n_galaxy": res.n_galaxy,
               "error": "", "timings": {k: round(v, 3) for k, v in res.timings.items()}}
    except AstroHVAEError as exc:
        rec = {"status": "failed", "error": one_line(str(exc))}
    except Exception as exc:  # noqa: BLE001 - one bad field must not stop the survey
        rec = {"status": "failed", "error": one_line(f"{inp}: {type(exc).__name__}: {exc}")}
    rec.update({"field": name, "input": str(inp), "catalog": str(out),
                "seconds": round(time.perf_counter() - t0, 3),
                "cpu_seconds": round(time.process_time() - c0, 3),  # the worker process, all its threads
                "peak_rss_mb": round(_peak_rss_mb(), 1),
                "worker": _worker_address(), "host": socket.gethostname(), "pid": os.getpid(),
                "started": round(started, 3), "finished": round(time.time(), 3)})  # Unix times
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
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(me)
    except OSError as exc:  # e.g. a full disk: leave no empty lock behind
        lock.unlink(missing_ok=True)
        raise OutputError(out_dir, f"cannot write {lock.name} ({exc.strerror or exc})") from None
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _write_ledger(path, ledger):
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(ledger, indent=1, sort_keys=True))
    except OSError as exc:  # e.g. a full disk
        raise OutputError(path, f"cannot write the survey ledger ({exc.strerror or exc})") from None


def _read_ledger(path):
    """The ledger at ``path``: None when there is none; `OutputError` when it is not one.

    A file that is not a ledger this program wrote (a folder, other JSON,
    entries that are not objects) is never replaced: the survey stops with
    one line instead.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise OutputError(path, "is not a survey ledger file (a folder or special file); move it away")
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise OutputError(path, f"is not a survey ledger ({type(exc).__name__}); move it away") from None
    if not isinstance(data, dict) or not isinstance(data.get("fields"), dict):
        raise OutputError(path, "is not a survey ledger (no \"fields\" object); move it away")
    bad = [k for k, v in data["fields"].items() if not isinstance(v, dict)]
    if bad:
        raise OutputError(path, f"is not a survey ledger (entry {bad[0]!r} is not an object); move it away")
    return data


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
    combined: dict | None = None
    """What `combine_catalogues` wrote (paths, rows, primaries), None when it did not run."""

    @property
    def n_failed(self):
        return int(np.sum(self.table["status"] == "failed")) if len(self.table) else 0


DEFAULT_RETRIES = 2
"""Times a field is started again after the worker running it died (dask's ``allowed-failures``)."""
DEFAULT_CONNECT_TIMEOUT = 10.0
"""Seconds `run_survey` waits for a ``scheduler`` address to answer."""
CLUSTERS = ("slurm", "pbs", "sge")
WORKER_RECOUNT = 5.0
"""Seconds between counts of the cluster's workers (batch-job workers join while a survey runs)."""
LEDGER_INTERVAL = 2.0
"""Seconds between rewrites of the ledger while fields finish (each rewrite is O(fields)).

A catalogue on disk is the proof that a field is done (a rerun skips it
whatever the ledger says), so a ledger a few seconds old loses nothing."""


def _check_memory_limit(memory_limit):
    """``memory_limit`` as dask takes it; `InputError` (one line) when it is not a size."""
    from dask.utils import parse_bytes

    if memory_limit is None or memory_limit == "auto" or isinstance(memory_limit, (int, float)):
        return memory_limit
    try:
        if parse_bytes(str(memory_limit)) <= 0:
            raise ValueError
    except (ValueError, TypeError):
        raise InputError("--memory-limit", f"{memory_limit!r} is not a memory size (e.g. 4GiB, 500MB)") from None
    return memory_limit


def connect(address, timeout=DEFAULT_CONNECT_TIMEOUT):
    """A `distributed.Client` of the scheduler at ``address``, within ``timeout`` seconds.

    Raises
    ------
    InputError
        ``ADDRESS: cannot reach the dask scheduler ...`` (one line) when the
        scheduler does not answer in time or the address is not one.
    """
    import logging

    from dask.distributed import Client

    quiet = [logging.getLogger(n) for n in ("distributed.client", "distributed.comm", "distributed.core")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.CRITICAL)
    try:
        return Client(address, timeout=float(timeout))
    except Exception as exc:  # noqa: BLE001 - OSError, TimeoutError, ValueError of a bad address
        reason = one_line(f"{type(exc).__name__}: {exc}", 160)
        raise InputError(address, f"cannot reach the dask scheduler within {timeout:g} s ({reason})") from None
    finally:
        for lg, lv in zip(quiet, levels):
            lg.setLevel(lv)


def jobqueue_cluster(kind, *, cores=None, memory=None, walltime=None, queue=None, account=None,
                     processes=None, config=None, local_directory=None, log_directory=None, python=None,
                     job_extra_directives=None):
    """A dask-jobqueue cluster of Slurm, PBS or SGE jobs (no job is submitted until it is scaled).

    Parameters
    ----------
    kind : {'slurm', 'pbs', 'sge'}
    cores, memory, walltime, queue, account
        Per batch job, as the batch system takes them (``account`` is SGE's
        project).  Each job runs ``processes`` single-threaded workers
        (default: ``cores``), each with ``memory / processes``.  Without a
        ``config`` file the defaults are 1 core, 4GiB and one hour.
    config : path, optional
        A dask YAML file (``jobqueue: slurm: cores: ...``) read first; the
        arguments given here override it.
    job_extra_directives : list of str, optional
        More ``#SBATCH``/``#PBS``/``#$`` lines.

    Returns
    -------
    dask_jobqueue.JobQueueCluster
        Its scheduler runs in this process (so ``allowed-failures`` and
        ``worker-saturation`` set around this call apply); ``job_script()``
        shows what would be submitted.
    """
    import dask

    try:
        import dask_jobqueue
    except ImportError:
        raise InputError("--cluster", "needs dask-jobqueue (pip install dask-jobqueue)") from None
    if kind not in CLUSTERS:
        raise InputError("--cluster", f"{kind!r} is not one of {', '.join(CLUSTERS)}")
    if config is not None:
        cfg_path = Path(config)
        if not cfg_path.is_file():
            raise InputError(cfg_path, "dask config file not found")
        try:
            loaded = dask.config.collect(paths=[str(cfg_path)], env={})
        except Exception as exc:  # noqa: BLE001 - YAML errors
            raise InputError(cfg_path, one_line(f"not a dask YAML config ({type(exc).__name__}: {exc})", 200))
        dask.config.update(dask.config.config, loaded, priority="new")
    else:
        cores = 1 if cores is None else cores
        memory = "4GiB" if memory is None else memory
        walltime = "01:00:00" if walltime is None else walltime
    if processes is None and cores is not None:
        processes = cores  # single-threaded workers, like the LocalCluster
    cls = {"slurm": dask_jobqueue.SLURMCluster, "pbs": dask_jobqueue.PBSCluster,
           "sge": dask_jobqueue.SGECluster}[kind]
    kw = {"cores": cores, "memory": memory, "processes": processes, "walltime": walltime, "queue": queue,
          "local_directory": local_directory, "log_directory": log_directory, "python": python or sys.executable,
          "job_extra_directives": job_extra_directives, "scheduler_options": {"dashboard_address": ":0"}}
    if account is not None:
        kw["project" if kind == "sge" else "account"] = account
    try:
        return cls(**{k: v for k, v in kw.items() if v is not None})
    except ValueError as exc:
        raise InputError("--cluster", one_line(str(exc), 200)) from None


def _expected_modelsha(weights):
    """sha256 of the classifier weights a catalogue made now would carry (MODELSHA), or None."""
    from astrohvae.classify.base import DEFAULT_WEIGHTS
    from astrohvae.models.weights import weights_hash

    try:
        return weights_hash(weights if weights is not None else DEFAULT_WEIGHTS)
    except (AstroHVAEError, OSError):
        return None


def _catalog_modelsha(path):
    from astropy.io import fits

    try:
        return str(fits.getval(path, "MODELSHA", ext=0))
    except Exception:  # noqa: BLE001
        return None


def _sweep_temporaries(out_dir, plan):
    """Remove the temporary files a killed run or worker left of this survey's outputs.

    Every output is written under ``.NAME.XXXX.tmp`` (`astrohvae.io.atomic.atomic_path`):
    the catalogues with their previews and region files, the ledger and the
    combined catalogue.  Called under the survey lock, so no writer is alive.
    """
    names = ["survey.json", f"{COMBINED_STEM}.parquet", f"{COMBINED_STEM}.fits"]
    for _, _, out in plan:
        names += [out.name, out.with_suffix(".png").name, out.with_suffix(".reg").name]
    for name in names:
        for stale in out_dir.glob(f".{name}.*.tmp"):
            with contextlib.suppress(OSError):
                stale.unlink()


def run_survey(inputs, out_dir, *, scheduler=None, workers=None, weights=None, device="auto",
               batch_size=256, segmenter="auto", nsigma=DEFAULT_NSIGMA, memory_limit="4GiB",
               threads_per_worker=1, progress=True, preview=False, max_in_flight=None,
               processes=True, retries=DEFAULT_RETRIES, connect_timeout=DEFAULT_CONNECT_TIMEOUT,
               cluster=None, jobs=1, combine=True, regions=False, isophote=None):
    """Catalogue many fields on dask.distributed, resumably.

    Parameters
    ----------
    inputs : sequence of path
        One entry per field (an SDSS field folder, a MEF/cube file, ...).
        Relative paths are made absolute here, on the client, so that
        workers started in other folders (or on other machines sharing the
        file system) find them; a worker that cannot see a path records a
        one-line failure naming itself and the path.
    out_dir : path
        Output folder (created if missing): ``<field>.cat.fits`` per field,
        ``survey.json`` (the ledger) and the combined catalogue
        (`combine_catalogues`).
    scheduler : str, optional
        Address of a running dask scheduler; default a `LocalCluster`.
        Unreachable within ``connect_timeout`` seconds: `InputError`.
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
    retries : int
        A field whose worker dies (killed, out of memory) is started again
        on another worker up to this many times, then recorded as failed
        (dask's ``distributed.scheduler.allowed-failures`` of the clusters
        started here; a ``scheduler`` of your own uses its own setting, which
        the ledger records).
    cluster : dask cluster, optional
        A cluster object to use (e.g. `jobqueue_cluster`); it is scaled to
        ``jobs`` jobs and closed at the end.
    combine : bool
        Write the combined survey catalogue at the end.
    regions : bool
        Also write ``<field>.cat.reg`` (DS9 regions) beside each catalogue.
    isophote : float, optional
        Footprint level of the network segmenter (see `astrohvae.pipeline.field.run_field`).

    Returns
    -------
    SurveyResult
        ``table``: one row per input (status ``done``, ``skipped`` = already
        complete, or ``failed`` with the error).  A complete catalogue made
        with other classifier weights (its ``MODELSHA``) is not skipped but
        made again.
    """
    t_start = time.perf_counter()
    memory_limit = _check_memory_limit(memory_limit)
    out_dir = Path(os.path.abspath(os.path.expanduser(str(out_dir))))
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(out_dir, "exists and is not a folder")
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out_dir, f"cannot create output folder ({exc.strerror or exc})")
    if not os.access(out_dir, os.W_OK):
        raise OutputError(out_dir, "output folder is not writable")
    try:
        ledger_path = out_dir / "survey.json"
        plan = _plan(inputs, out_dir)
        if weights is not None:
            weights = os.path.abspath(os.path.expanduser(str(weights)))
        opts = {"weights": weights, "device": device, "batch_size": batch_size,
                "segmenter": segmenter if isinstance(segmenter, str) else "auto", "nsigma": nsigma,
                "threads": threads_per_worker, "preview": preview, "regions": regions, "isophote": isophote}
        modelsha = _expected_modelsha(weights)

        with _survey_lock(out_dir):
            old = _read_ledger(ledger_path) or {"fields": {}}
            ledger = {"version": __version__, "out": str(out_dir), "fields": dict(old["fields"])}
            # temporary files of a killed run can never become catalogues: remove them
            _sweep_temporaries(out_dir, plan)
            records, todo = _triage(plan, ledger, modelsha)
            n_workers, allowed_failures = 0, None
            if todo:
                with _client(scheduler, cluster, jobs, workers, threads_per_worker, processes, memory_limit,
                             retries, connect_timeout) as client:
                    try:
                        allowed_failures = _scheduler_allowed_failures(client)
                        n_workers = _run_tasks(client, todo, opts, records, ledger, ledger_path, allowed_failures,
                                               max_in_flight, progress)
                    finally:
                        with contextlib.suppress(OutputError):  # what finished before an interruption
                            _write_ledger(ledger_path, ledger)
                _sweep_temporaries(out_dir, plan)  # of workers that died mid-write
            for name, rec in records.items():
                ledger["fields"][name] = rec
            combined = None
            if combine:
                try:
                    combined = combine_catalogues(out_dir)
                except AstroHVAEError as exc:
                    ledger["combine_error"] = str(exc)
                else:
                    ledger.pop("combine_error", None)
            ledger["last_run"] = {"wall_seconds": round(time.perf_counter() - t_start, 3), "workers": n_workers,
                                  "processed": len(todo), "skipped": len(plan) - len(todo),
                                  "allowed_failures": allowed_failures, "modelsha": modelsha}
            _write_ledger(ledger_path, ledger)
        ordered = [records[name] for name, _, _ in plan]
        return SurveyResult(_summary_table(ordered), ledger_path, time.perf_counter() - t_start, n_workers,
                            combined)
    except BaseException:
        if created:  # leave no empty folder behind (rmdir removes only an empty one)
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        raise


def _plan(inputs, out_dir):
    """``[(name, absolute input, catalogue path)]``; two inputs of one field name: `InputError`."""
    plan, names = [], {}
    for inp in inputs:
        inp = os.path.abspath(os.path.expanduser(str(inp)))  # workers may run in other folders
        name = field_name(inp)
        if name in names:
            raise InputError(inp, f"field name {name!r} also used by {names[name]}")
        names[name] = inp
        plan.append((name, inp, default_output(name, out_dir)))
    return plan


def _triage(plan, ledger, modelsha):
    """Split the plan into records known now (skipped, invisible) and the fields to process.

    The fields to process come longest first (LPT, `cost_hint`): crowded low-latitude fields
    start at once.  The order matters for the tail of a short survey; a long one balances
    itself, and its headers are not read (~30 ms a field) before starting.
    """
    from astrohvae.io.catalog import is_complete

    records, todo = {}, []
    for name, inp, out in plan:
        made_with = _catalog_modelsha(out) if modelsha and out.is_file() else None
        if not _visible(inp):  # seen by nobody: no need to ask a worker
            records[name] = {"field": name, "input": inp, "catalog": str(out), "status": "failed",
                             "error": f"{inp}: no such file or folder"}
            ledger["fields"][name] = records[name]
        elif is_complete(out) and (made_with is None or made_with == modelsha):
            prev = ledger["fields"].get(name, {})
            rec = dict(prev) if prev.get("status") in ("done", "skipped") else {}
            rec.update({"field": name, "input": inp, "catalog": str(out), "status": "skipped", "error": ""})
            if "rows" not in rec:
                rec["rows"] = _catalog_rows(out)
            records[name] = rec
        else:
            todo.append((name, inp, out))
    if len(todo) <= COST_HINT_MAX_FIELDS:
        todo.sort(key=lambda item: (lambda b: 90.0 if b is None else b)(cost_hint(item[1])))
    return records, todo


@contextlib.contextmanager
def _client(scheduler, cluster, jobs, workers, threads_per_worker, processes, memory_limit, retries,
            connect_timeout):
    """A dask client on the user's scheduler, the given cluster, or a LocalCluster started here.

    worker-saturation 1.0: a worker holds one field at a time and the others wait at the
    scheduler, so a field is never queued behind a long one on a busy worker while another
    worker idles (dask's 1.1 gives a one-thread worker two).  allowed-failures: how often a
    field whose worker died is started again.  A cluster started or given here is closed at the end.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    sched_cfg = {"distributed.scheduler.worker-saturation": 1.0,
                 "distributed.scheduler.allowed-failures": int(retries)}
    own = None
    if scheduler:
        client = connect(scheduler, connect_timeout)
    elif cluster is not None:
        own = cluster
        _check_submit_command(cluster)
        cluster.scale(jobs=int(jobs))
        client = Client(cluster)
    else:
        with dask.config.set({**sched_cfg, "distributed.nanny.pre-spawn-environ": worker_environ(),
                              "distributed.worker.memory.monitor-interval": "1s",
                              "distributed.admin.system-monitor.interval": "2s"}):
            own = LocalCluster(n_workers=int(workers or 1), threads_per_worker=threads_per_worker,
                               processes=processes, memory_limit=memory_limit,
                               dashboard_address=None, silence_logs=50)
        client = Client(own)
    try:
        yield client
    finally:
        client.close()
        if own is not None:
            own.close()


def _run_tasks(client, todo, opts, records, ledger, ledger_path, allowed_failures, max_in_flight, progress):
    """Submit the fields, at most ``max_in_flight`` (default 2 per worker) at a time; record each result.

    Workers of batch jobs that join while it runs are counted every `WORKER_RECOUNT` seconds;
    the ledger is written at most every `LEDGER_INTERVAL` seconds.  Returns the number of workers.
    """
    from dask.distributed import as_completed

    n_workers = max(1, len(client.nthreads()))
    bar = _progress(len(todo), progress)
    pending = iter(todo)
    ac = as_completed()
    inputs_of = {}
    last_write = counted = time.monotonic()

    def submit_next():
        nxt = next(pending, None)
        if nxt is None:
            return False
        name, inp, out = nxt
        fut = client.submit(survey_task, inp, str(out), opts, key=f"field-{name}-{time.time_ns()}", pure=False)
        inputs_of[fut.key] = (name, inp, out)
        ac.add(fut)
        return True

    def top_up():
        nonlocal n_workers, counted
        if max_in_flight is None and time.monotonic() - counted >= WORKER_RECOUNT:
            n_workers = max(n_workers, len(client.nthreads()))
            counted = time.monotonic()
        while len(inputs_of) < int(max_in_flight or 2 * n_workers) and submit_next():
            pass

    top_up()
    for fut in ac:
        name, inp, out = inputs_of.pop(fut.key)
        try:
            rec = fut.result()
        except Exception as exc:  # noqa: BLE001 - KilledWorker: it killed every worker it ran on
            times = "too many" if allowed_failures is None else allowed_failures + 1
            rec = {"status": "failed", "field": name, "input": inp, "catalog": str(out),
                   "error": one_line(f"{inp}: its worker died {times} times (killed, e.g. out "
                                      f"of memory): {type(exc).__name__}: {exc}")}
        fut.release()
        records[rec["field"]] = rec
        ledger["fields"][rec["field"]] = rec
        if time.monotonic() - last_write >= LEDGER_INTERVAL:
            _write_ledger(ledger_path, ledger)
            last_write = time.monotonic()
        bar.update(1)
        bar.set_postfix_str(f"{rec['field']} {rec['status']}")
        top_up()
    bar.close()
    return n_workers


def _check_submit_command(cluster):
    """`InputError` when a dask-jobqueue cluster's submit command (sbatch, qsub) is not on this machine.

    dask-jobqueue would only log the failed submissions and the survey would
    wait for workers that never come.
    """
    import shutil

    cmd = str(getattr(getattr(cluster, "job_cls", None), "submit_command", "") or "").split()
    if cmd and shutil.which(cmd[0]) is None:
        cluster.close()
        raise InputError("--cluster", f"{cmd[0]} is not found on this machine; run the survey where jobs "
                                      "can be submitted (the cluster's login node)")


def _scheduler_allowed_failures(client):
    """The scheduler's bound on restarts of a task whose worker died (None when it cannot say)."""
    try:
        return int(client.run_on_scheduler(lambda dask_scheduler: dask_scheduler.allowed_failures))
    except Exception:  # noqa: BLE001 - an old or locked-down scheduler
        return None


def worker_environ():
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
