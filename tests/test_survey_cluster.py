"""`astrohvae survey` on clusters it did not start: real dask processes, worker faults, HPC job scripts,
the combined survey catalogue, and the survey's bad inputs (one line, nothing left behind)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from astrohvae.io.catalog import read_catalog
from astrohvae.pipeline.survey import run_survey

BIN = Path(sys.executable).parent


def _cli(*args):
    from click.testing import CliRunner

    from astrohvae.cli import main

    return CliRunner().invoke(main, [str(a) for a in args])


def _one_line(check, res, *needles):
    """Exit status 2 and one ``astrohvae: error:`` line naming each of ``needles`` (``check``: the
    conftest fixture `one_line_error`)."""
    assert res.exit_code == 2, res.output
    return check(res.stderr, *needles)


# ----------------------------------------------------------------------------- real scheduler and workers
class _DaskProcesses:
    """`dask scheduler` and `dask worker` processes started in their own folder, as a user would."""

    def __init__(self, folder, n_workers, allowed_failures, preload=None):
        self.folder = Path(folder)
        self.folder.mkdir()
        self.sched_file = self.folder / "scheduler.json"
        env = dict(os.environ, OMP_NUM_THREADS="1",
                   DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES=str(allowed_failures),
                   DASK_DISTRIBUTED__SCHEDULER__WORKER_SATURATION="1.0")
        self.env = env
        self.procs = [self._start("scheduler", "--port", "0", "--no-dashboard",
                                  "--scheduler-file", self.sched_file)]
        deadline = time.monotonic() + 60
        while not self.sched_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.address = json.loads(self.sched_file.read_text())["address"]
        for _ in range(n_workers):
            extra = ["--preload", preload] if preload else []
            self.procs.append(self._start("worker", self.address, "--nthreads", "1", "--memory-limit", "0",
                                          "--no-dashboard", *extra))

    def _start(self, *args):
        return subprocess.Popen([str(BIN / "dask"), *map(str, args)], cwd=self.folder, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def close(self):
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)  # the process group this fixture started
            except ProcessLookupError:
                pass
            p.wait()


class _Killer(threading.Thread):
    """SIGKILL the worker process running a field while it runs, ``times`` times."""

    def __init__(self, address, times=1):
        super().__init__(daemon=True)
        from dask.distributed import Client

        self.client = Client(address, timeout=30, set_as_default=False)
        self.times, self.killed, self.stop = times, [], False

    def _pids(self, pids):
        """Learn the process id of every worker while it is idle (a busy one answers late: the field may end)."""
        try:
            workers = self.client.scheduler_info()["workers"]
        except Exception:  # noqa: BLE001 - the scheduler is busy removing a worker
            return
        for addr in workers:
            if addr not in pids:
                try:
                    pids[addr] = self.client.run(os.getpid, workers=[addr])[addr]
                except Exception:  # noqa: BLE001 - the worker went away meanwhile
                    pass

    def run(self):
        pids = {}
        while not self.stop and len(self.killed) < self.times:
            self._pids(pids)
            try:
                busy = self.client.processing()
            except Exception:  # noqa: BLE001 - the scheduler is busy removing a worker
                time.sleep(0.05)
                continue
            for addr, keys in busy.items():
                keys = [k for k in keys if str(k).startswith("field-")]
                if keys and addr in pids:
                    time.sleep(0.3)  # well inside the task (the first one loads the model: seconds)
                    try:
                        os.kill(pids.pop(addr), signal.SIGKILL)
                    except ProcessLookupError:
                        continue
                    self.killed.append((addr, str(keys[0])))
                    break
            time.sleep(0.02)
        self.client.close()


_VICTIM_PRELOAD = """
# dask worker preload: the survey task of a field folder named 'victim' kills its own worker (SIGKILL),
# as a field that runs a worker out of memory does, on every worker it is started on
import os
import signal
from pathlib import Path

import astrohvae.pipeline.survey as survey

# (dask may execute a preload file twice: wrap the real task once)
_task = getattr(survey.survey_task, "wrapped", survey.survey_task)


def survey_task(inp, out, opts):
    if Path(inp).name == "victim":
        os.kill(os.getpid(), signal.SIGKILL)
    return _task(inp, out, opts)


survey_task.wrapped = _task
survey.survey_task = survey_task
"""


@pytest.mark.slow
def test_remote_workers_relative_paths_and_a_worker_killed_mid_field(tmp_path, survey_fields, tiny_weights,
                                                                    survey_reference, survey_opts, monkeypatch):
    """Scheduler and two workers started in another folder; relative paths; one worker SIGKILLed mid-field."""
    preload = tmp_path / "victim_preload.py"
    preload.write_text(_VICTIM_PRELOAD)
    cluster = _DaskProcesses(tmp_path / "elsewhere", n_workers=2, allowed_failures=1, preload=preload)
    try:
        from dask.distributed import Client

        with Client(cluster.address, timeout=30, set_as_default=False) as c:
            c.wait_for_workers(2, timeout=60)
        monkeypatch.chdir(survey_fields[0].parent)
        killer = _Killer(cluster.address, times=1)
        killer.start()
        res = run_survey([f.name for f in survey_fields], "out", weights=os.path.relpath(tiny_weights),
                         scheduler=cluster.address, **survey_opts)
        killer.stop = True
        killer.join(10)
        assert len(killer.killed) == 1, "no worker was caught mid-field"
        status = dict(zip(res.table["field"], res.table["status"]))
        assert status == {f.name: "done" for f in survey_fields}, res.table["field", "status", "error"]
        out = survey_fields[0].parent / "out"
        ledger = json.loads((out / "survey.json").read_text())
        assert sorted(ledger["fields"]) == sorted(f.name for f in survey_fields)
        assert ledger["last_run"]["allowed_failures"] == 1 and ledger["last_run"]["processed"] == len(survey_fields)
        killed_field = killer.killed[0][1].split("-")[1]
        assert ledger["fields"][killed_field]["worker"] != killer.killed[0][0]  # finished on another worker
        assert sorted(p.name for p in out.iterdir()) == sorted(
            [f"{f.name}.cat.fits" for f in survey_fields] + ["survey-catalogue.fits", "survey-catalogue.parquet",
                                                             "survey.json"])
        for f in survey_fields:
            got = read_catalog(out / f"{f.name}.cat.fits").table
            assert len(got) == len(survey_reference[f.name]) == ledger["fields"][f.name]["rows"]
            for col in ("id", "x", "y", "ra", "dec", "flux_r", "class", "p_galaxy"):
                np.testing.assert_array_equal(got[col], survey_reference[f.name].table[col])

        # a field that kills every worker it runs on: restarted once, then recorded failed; the rest complete
        # (every worker loads _VICTIM_PRELOAD: the task of a field named 'victim' SIGKILLs its own worker)
        from astrohvae.simulate.io import write_simulation

        big = survey_fields[0].parent / "victim"
        big.mkdir(exist_ok=True)
        write_simulation(big, seed=120, size=(128, 128))
        victim = big.name
        res = run_survey([f.name for f in survey_fields] + [victim], "out2", weights=str(tiny_weights),
                         scheduler=cluster.address, **survey_opts)
        status = dict(zip(res.table["field"], res.table["status"]))
        assert status == {**{f.name: "done" for f in survey_fields}, victim: "failed"}, res.table["field", "error"]
        err = dict(zip(res.table["field"], res.table["error"]))[victim]
        assert "worker died 2 times" in err and "\n" not in err
    finally:
        cluster.close()


def test_a_worker_that_cannot_see_a_path_names_itself_and_the_path(tmp_path):
    from astrohvae.pipeline.survey import survey_task

    (tmp_path / "out").mkdir()
    rec = survey_task(str(tmp_path / "gone"), str(tmp_path / "out" / "gone.cat.fits"), {"device": "cpu"})
    assert rec["status"] == "failed"
    assert rec["error"].startswith(f"{tmp_path / 'gone'}: not visible on worker ")
    rec = survey_task(str(tmp_path), str(tmp_path / "nowhere" / "x.cat.fits"), {"device": "cpu"})
    assert rec["error"].startswith(f"{tmp_path / 'nowhere'}: not visible on worker ")


def test_local_cluster_retries_are_dask_allowed_failures(tmp_path, survey_fields, tiny_weights, survey_reference,
                                                        survey_opts):
    res = run_survey(survey_fields[:1], tmp_path / "out", weights=tiny_weights, processes=False, retries=5,
                     **survey_opts)
    assert list(res.table["status"]) == ["done"]
    ledger = json.loads((tmp_path / "out" / "survey.json").read_text())
    assert ledger["last_run"]["allowed_failures"] == 5


# ----------------------------------------------------------------------------- HPC batch systems
def test_slurm_job_script_from_the_documented_options(tmp_path):
    """The README's example: --cluster slurm --cores 8 --memory 32GB --walltime 02:00:00 --queue normal --account astro."""
    from astrohvae.pipeline.survey import jobqueue_cluster

    cluster = jobqueue_cluster("slurm", cores=8, memory="32GB", walltime="02:00:00", queue="normal",
                               account="astro", python="/opt/venv/bin/python")
    try:
        script = cluster.job_script()
    finally:
        cluster.close()
    lines = script.splitlines()
    for directive in ("#SBATCH -p normal", "#SBATCH -A astro", "#SBATCH -n 1", "#SBATCH --cpus-per-task=8",
                      "#SBATCH --mem=30G", "#SBATCH -t 02:00:00"):
        assert directive in lines, script
    cmd = next(ln for ln in lines if "distributed.cli.dask_worker" in ln)
    assert cmd.startswith("/opt/venv/bin/python -m distributed.cli.dask_worker tcp://")
    # eight single-threaded worker processes of 4 GB (3.73 GiB) each
    assert "--nthreads 1" in cmd and "--nworkers 8" in cmd and "--memory-limit 3.73GiB" in cmd


def test_jobqueue_options_from_a_dask_config_file(tmp_path, survey_fields, one_line_error):
    from astrohvae.pipeline.survey import jobqueue_cluster

    cfg = tmp_path / "hpc.yaml"
    cfg.write_text("jobqueue:\n  pbs:\n    cores: 4\n    memory: 8GB\n    walltime: '00:30:00'\n    queue: short\n")
    import copy

    import dask
    import dask_jobqueue  # noqa: F401  (its defaults enter dask.config on import: before the snapshot)

    saved = copy.deepcopy(dask.config.config)
    try:
        cluster = jobqueue_cluster("pbs", config=cfg, account="proj42")
        try:
            script = cluster.job_script()
        finally:
            cluster.close()
    finally:  # the file's settings do not leak into other tests
        dask.config.config.clear()
        dask.config.config.update(saved)
    assert "#PBS -q short" in script and "#PBS -A proj42" in script and "walltime=00:30:00" in script
    assert "ncpus=4" in script and "--nworkers 4" in script
    if shutil.which("sbatch") is None:  # no Slurm here: one line, not a survey waiting for workers forever
        res = _cli("survey", survey_fields[0], "--out", tmp_path / "o", "--cluster", "slurm", "--no-progress")
        _one_line(one_line_error, res, "--cluster: sbatch is not found on this machine")
        assert not (tmp_path / "o").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_text("jobqueue: [unclosed\n")
    res = _cli("survey", tmp_path, "--out", tmp_path / "o", "--cluster", "sge", "--dask-config", bad)
    _one_line(one_line_error, res, str(bad), "not a dask YAML config")


# ----------------------------------------------------------------------------- one survey catalogue
def test_adjacent_fields_each_overlap_source_is_primary_once(tmp_path, tiny_weights, survey_opts, one_line_error):
    import pyarrow.parquet as pq
    from astropy import units as u
    from astropy.coordinates import SkyCoord, search_around_sky
    from astropy.table import Table

    from astrohvae.simulate.io import read_truth

    res = _cli("simulate", tmp_path / "sky", "--seed", 5150, "--size", "256x256", "--adjacent", 2)
    assert res.exit_code == 0, res.output
    a, b = sorted((tmp_path / "sky").iterdir())
    assert (a.name, b.name) == ("100000-1-5150", "100000-1-5151")
    # the shared strip: same pixels, same truth on the sky
    from astropy.io import fits

    ra_a = fits.getdata(next(a.glob("frame-r-*")))[128:]
    ra_b = fits.getdata(next(b.glob("frame-r-*")))[:128]
    np.testing.assert_array_equal(ra_a, ra_b)
    ta, tb = read_truth(a)[0], read_truth(b)[0]
    shared = set(ta["id"][(ta["y"] >= 128) & (ta["y"] < 256)]) & set(tb["id"][(tb["y"] >= 0) & (tb["y"] < 128)])
    assert len(shared) > 5

    out = tmp_path / "out"
    res = run_survey([a, b], out, weights=tiny_weights, processes=False, **survey_opts)
    assert list(res.table["status"]) == ["done", "done"]
    cat = Table.read(out / "survey-catalogue.fits")
    pq_tab = pq.read_table(out / "survey-catalogue.parquet")
    assert pq_tab.num_rows == len(cat) == sum(res.table["rows"])
    np.testing.assert_array_equal(np.asarray(pq_tab["primary"]), np.asarray(cat["primary"]))
    np.testing.assert_array_equal(np.asarray(pq_tab["field"]).astype(str), np.asarray(cat["field"]).astype(str))
    field, prim, y = np.asarray(cat["field"]).astype(str), np.asarray(cat["primary"]), np.asarray(cat["y"])
    c = SkyCoord(cat["ra"], cat["dec"], unit="deg")
    i, j, _, _ = search_around_sky(c, c, 1 * u.arcsec)
    pair = (field[i] == a.name) & (field[j] == b.name)
    i, j = i[pair], j[pair]
    assert len(i) >= 5
    assert np.all(prim[i] ^ prim[j]), "each source seen by both fields is primary exactly once"
    # the primary one is the detection farther from its own field's edge
    edge = np.asarray(cat["edge_dist"])
    assert np.all(np.where(prim[i], edge[i] >= edge[j], edge[j] >= edge[i]))
    # every detection in the strip of either field was matched; all others are primary
    in_strip = ((field == a.name) & (y > 130)) | ((field == b.name) & (y < 125))
    matched = np.zeros(len(cat), bool)
    matched[i] = matched[j] = True
    assert np.all(matched[in_strip & (np.abs(y - 128) > 3)]) or in_strip.sum() - matched[in_strip].sum() <= 1
    assert np.all(prim[~matched])
    assert int(prim.sum()) == len(cat) - len(i) == res.combined["primary"]

    # `astrohvae combine` rebuilds the same table from the per-field catalogues
    (out / "survey-catalogue.fits").unlink()
    (out / "survey-catalogue.parquet").unlink()
    res = _cli("combine", out)
    assert res.exit_code == 0, res.output
    again = Table.read(out / "survey-catalogue.fits")
    assert again.colnames == cat.colnames and len(again) == len(cat)
    for col in ("field", "id", "ra", "primary", "edge_dist"):
        np.testing.assert_array_equal(again[col], cat[col])
    res = _cli("combine", tmp_path / "sky")
    _one_line(one_line_error, res, "no complete <field>.cat.fits")


def test_primary_flags_known_answer():
    from astrohvae.pipeline.combine import edge_distance, primary_flags

    np.testing.assert_allclose(edge_distance([0, 9, 4.5], [5, 5, 0], (10, 10)), [0.5, 0.5, 0.5])
    one = 1 / 3600.0  # 1 arcsec
    ra = np.array([10.0, 10.0 + 0.2 * one, 10.0 + 0.5 * one, 20.0, np.nan, 10.0 + 0.1 * one])
    dec = np.zeros(6)
    field = np.array(["a", "b", "c", "a", "b", "a"])
    edge = np.array([5.0, 40.0, 40.0, 1.0, 0.0, 100.0])
    # 0 (a), 1 (b), 2 (c) are one source: b and c tie at 40 px, b's name is smaller; 5 (a, 100 px) is the
    # same source too, in field a: it beats every other field's detection
    np.testing.assert_array_equal(primary_flags(ra, dec, field, edge), [False, False, False, True, True, True])


# ----------------------------------------------------------------------------- bad inputs, one line each
def test_memory_limit_that_is_not_a_size(tmp_path, survey_fields, one_line_error):
    res = _cli("survey", survey_fields[0], "--out", tmp_path / "o", "--memory-limit", "lots")
    _one_line(one_line_error, res, "--memory-limit", "'lots' is not a memory size")
    assert not (tmp_path / "o").exists()


def test_unreachable_scheduler_is_one_line_within_its_timeout(tmp_path, survey_fields, one_line_error):
    t0 = time.monotonic()
    res = _cli("survey", survey_fields[0], "--out", tmp_path / "o", "--scheduler", "tcp://127.0.0.1:1",
               "--connect-timeout", "2", "--no-progress")
    line = _one_line(one_line_error, res, "astrohvae: error: tcp://127.0.0.1:1: cannot reach the dask scheduler within 2 s")
    assert time.monotonic() - t0 < 30, line
    assert not (tmp_path / "o").exists()  # the folder it made is removed again


def test_ledger_that_is_not_a_ledger_is_refused_and_kept(tmp_path, survey_fields, tiny_weights, one_line_error):
    out = tmp_path / "o"
    out.mkdir()
    (out / "survey.json").mkdir()
    res = _cli("survey", survey_fields[0], "--out", out, "--no-progress")
    _one_line(one_line_error, res, str(out / "survey.json"), "is not a survey ledger file")
    assert (out / "survey.json").is_dir()
    (out / "survey.json").rmdir()
    for text, why in (('{"fields": {"a": 5}}', "entry 'a' is not an object"), ("[1, 2]", 'no "fields" object'),
                      ("{not json", "JSONDecodeError")):
        (out / "survey.json").write_text(text)
        res = _cli("survey", survey_fields[0], "--out", out, "--no-progress")
        _one_line(one_line_error, res, why)
        assert (out / "survey.json").read_text() == text
        assert not (out / ".survey.lock").exists()


def test_survey_on_a_full_disk_leaves_no_lock(tmp_path, survey_fields, one_line_error):
    mnt = tmp_path / "full"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs")
    try:
        fd = os.open(mnt / "filler", os.O_CREAT | os.O_WRONLY)
        try:
            with pytest.raises(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        res = _cli("survey", survey_fields[0], "--out", mnt / "o", "--no-progress")
        _one_line(one_line_error, res, "No space left on device")
        assert not (mnt / "o").exists()  # no empty lock, no empty folder
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_catalogues_of_other_weights_are_made_again(tmp_path, survey_fields, tiny_weights, survey_reference,
                                                    survey_opts):
    from astropy.io import fits

    from astrohvae.models.weights import weights_hash

    out = tmp_path / "o"
    run_survey(survey_fields[:2], out, weights=tiny_weights, processes=False, **survey_opts)
    cat = out / f"{survey_fields[0].name}.cat.fits"
    assert fits.getval(cat, "MODELSHA") == weights_hash(tiny_weights)
    with fits.open(cat, mode="update") as hdul:  # as if made with other weights
        hdul[0].header["MODELSHA"] = "0" * 16
    res = run_survey(survey_fields[:2], out, weights=tiny_weights, processes=False, **survey_opts)
    assert dict(zip(res.table["field"], res.table["status"])) == {survey_fields[0].name: "done",
                                                                  survey_fields[1].name: "skipped"}
    assert fits.getval(cat, "MODELSHA") == weights_hash(tiny_weights)
    np.testing.assert_array_equal(read_catalog(cat).table["x"], survey_reference[survey_fields[0].name].table["x"])


def test_lock_that_cannot_be_written_is_removed(tmp_path, monkeypatch):
    """The full-disk case without root: the lock's write fails with ENOSPC -> one line, no empty lock."""
    import errno

    import astrohvae.pipeline.survey as survey
    from astrohvae.errors import OutputError

    class _Full:
        def __init__(self, fd, *a, **k):
            self.fd = fd

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            os.close(self.fd)

        def write(self, text):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(survey.os, "fdopen", _Full)
    with pytest.raises(OutputError, match="cannot write .survey.lock \\(No space left on device\\)"):
        with survey._survey_lock(tmp_path):
            pass
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_a_one_thread_worker_runs_one_field_at_a_time(tmp_path, survey_fields, tiny_weights):
    """Dask work inside a field stays in its task: no compute() reaches the cluster and secedes.

    Before, the network segmenter's path computed through the worker's client, the task seceded
    and the one-thread worker started the next field alongside (overlaps of 0.4-1.4 s per field).
    """
    out = tmp_path / "o"
    res = run_survey(survey_fields, out, weights=tiny_weights, workers=1, segmenter="auto", progress=False,
                     device="cpu", combine=False)
    assert set(res.table["status"]) == {"done"}
    recs = sorted(json.loads((out / "survey.json").read_text())["fields"].values(), key=lambda r: r["started"])
    assert len({r["pid"] for r in recs}) == 1
    for a, b in zip(recs, recs[1:]):
        assert b["started"] >= a["finished"] - 0.002, (a["field"], b["field"])
