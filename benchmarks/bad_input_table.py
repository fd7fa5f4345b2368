"""The bad-input table of issue 16: exit status, stderr lines and leftovers per case, before and after.

Runs every case of ``benchmarks/bad_input_cases.py`` as a subprocess
(``python -m astrohvae.cli ...``, 6 GiB address-space limit, 180 s timeout)
over a fresh copy of the fixtures, with this checkout's code and, with
``--before SRC``, with the code in SRC too (e.g. an exported ``main``:
``git archive main | tar -x -C /tmp/mainsrc``).  Prints a markdown table.

    python benchmarks/bad_input_table.py [--before /tmp/mainsrc] [--md benchmarks/results/bad_input.md]

The promise per case: exit 2, one stderr line ``astrohvae: error: ...``,
no leftovers (no new file, no input changed).  The device-node case needs
root (mknod) and is skipped otherwise.  ``--out /dev/null`` itself is never
run: on an unfixed version as root it would replace the system's /dev/null.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/bad_input_cases.py

import bad_input_cases as bic  # noqa: E402


def run_case(case, template, work, src):
    """(exit status, stderr lines, one-line error?, leftovers, seconds) of ``case`` with the code in ``src``."""
    root = Path(tempfile.mkdtemp(dir=work))
    try:
        paths = bic.make_fixtures(root, template)
        argv, names = bic.render(case, paths)
        before = bic.snapshot(root)
        env = dict(os.environ, PYTHONPATH=str(src))
        t0 = time.time()
        try:
            res = subprocess.run([sys.executable, "-m", "astrohvae.cli", *argv], cwd=root, env=env,
                                 capture_output=True, text=True, timeout=180, preexec_fn=bic.isolated_env())
            code, err = res.returncode, res.stderr
        except subprocess.TimeoutExpired as exc:
            code, err = "timeout", (exc.stderr or b"").decode(errors="replace") if isinstance(exc.stderr, bytes) \
                else (exc.stderr or "")
        secs = time.time() - t0
        lines = [ln for ln in err.strip().splitlines() if ln.strip()]
        one = len(lines) == 1 and lines[0].startswith("astrohvae: error: ") and names in lines[0]
        left = bic.diff(before, bic.snapshot(root))
        return code, len(lines), one, left, secs, (lines[-1] if lines else "")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_sigterm(work, src):
    """SIGTERM while `simulate` writes a frame: (exit status, leftovers)."""
    root = Path(tempfile.mkdtemp(dir=work))
    out = root / "sim"
    env = dict(os.environ, PYTHONPATH=str(src))
    t0 = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "astrohvae.cli", "simulate", str(out), "--seed", "2", "--size",
                             "1500x1500"], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = False
    while time.time() - t0 < 240 and proc.poll() is None:
        if out.is_dir() and any(p.name.endswith(".tmp") for p in out.iterdir()):
            proc.send_signal(signal.SIGTERM)
            sent = True
            break
        time.sleep(0.005)
    _, err = proc.communicate(timeout=120)
    left = sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.is_dir() else []
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    shutil.rmtree(root, ignore_errors=True)
    code = proc.returncode if sent else "finished before a temporary was seen"
    return code, len(lines), False, [f"+{n}" for n in left], time.time() - t0, ""


def _fmt(r):
    if r is None:
        return "skipped", "", ""
    code, n, one, left, secs, _ = r
    leftover = "none" if not left else ", ".join(left[:3]) + (f" (+{len(left) - 3})" if len(left) > 3 else "")
    return str(code), str(n), leftover


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, default=None, help="source tree of the version before (e.g. main)")
    ap.add_argument("--md", type=Path, default=None, help="also write the table to this file")
    args = ap.parse_args(argv)
    versions = ([("before", args.before)] if args.before else []) + [("after", ROOT)]
    rows = []
    with tempfile.TemporaryDirectory(prefix="astrohvae-badinput-") as work:
        template = bic.make_template(Path(work) / "template")
        for case in bic.CASES:
            if case.root and os.geteuid() != 0:
                rows.append((case, {v: None for v, _ in versions}))
                continue
            res = {}
            for label, src in versions:
                res[label] = run_case(case, template, work, src)
                print(f"{case.id:32s} {label:6s} exit {res[label][0]}  {res[label][1]} line(s)  "
                      f"left {res[label][3][:3]}  {res[label][4]:.1f} s", file=sys.stderr, flush=True)
            rows.append((case, res))
        sig = {label: run_sigterm(work, src) for label, src in versions}
    head = "| case | what | " + " | ".join(f"{v}: exit | {v}: stderr lines | {v}: leftovers" for v, _ in versions)
    out = [head + " |", "|" + "---|" * (2 + 3 * len(versions))]
    for case, res in rows:
        cells = []
        for v, _ in versions:
            cells.extend(_fmt(res[v]))
        out.append(f"| {case.id} | {case.what} | " + " | ".join(cells) + " |")
    cells = []
    for v, _ in versions:
        cells.extend(_fmt(sig[v]))
    out.append("| sigterm-during-write | SIGTERM while simulate writes a frame | " + " | ".join(cells) + " |")
    for what, owner in bic.OTHERS:
        out.append(f"| — | {what} | " + " | ".join(["owned by the " + owner, "", ""] * len(versions)) + " |")
    text = "\n".join(out)
    print(text)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(text + "\n")


if __name__ == "__main__":
    main()
