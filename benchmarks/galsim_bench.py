"""Segmentation and catalogue on independent GalSim fields (`galsim_fields.py`), beside photutils and sep.

For every seed (and, with ``--smooth``, the same field with smooth galaxies) it reports, with
the functions of `segment_bench.py` (same matching, same definitions):

* segmentation: IoU with the 0.5σ truth (default footprints) and with the 1σ truth
  (``--isophote 1``), purity, completeness r < 22, fragments per r < 20 galaxy and the
  fraction shredded, segments, seconds; for photutils (1.5σ), sep (SExtractor's library,
  DEBLEND_CONT 0.005), the shipped segmenter, the shipped segmenter at ``--isophote 1`` and
  with photutils' contrast criterion alone (``fragment_excess=None``, no fragment test);
* catalogue (structured fields): `astrohvae.pipeline.field.run_field` as ``astrohvae run``
  runs it, matched to the truth within 1" (`astrohvae.evaluation.truth.evaluate_truth`):
  AUC of p_galaxy and star / galaxy completeness by r bin; the peer is sep's half-light
  radius (``flux_radius`` of the r band, objects detected at 1.5σ, matched within 1") as a
  star/galaxy score on its own matches.

The fields are written to ``--fields`` (kept and reused: delete them to draw again).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/galsim_bench.py [--seeds 201 202 203] [--smooth]
        [--size 2048 1489] [--fields /tmp/astrohvae-galsim] [--out benchmarks/results/galsim]
        [--no-catalog]

Needs ``pip install galsim`` and sep.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import galsim_fields as gf  # noqa: E402
import segment_bench as sb  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MAG_EDGES = (16.0, 18.0, 20.0, 21.0, 22.0)


def load_truth(path):
    from astropy.table import Table

    t = Table.read(path)
    if t["type"].dtype.kind == "S":
        t["type"] = np.char.decode(np.asarray(t["type"]))
    return t


def field_files(seed, structure, folder, size):
    tag = f"gs-{seed}" + ("" if structure else "-smooth")
    path = Path(folder) / f"{tag}.fits"
    if not path.is_file():
        sim = gf.simulate(seed, tuple(size), structure=structure)
        gf.write(sim, seed, folder, tag)
    return path, Path(folder) / f"{tag}-truth.fits", Path(folder) / f"{tag}-levels.npz"


def segmenters():
    from astrohvae.segmentation.network import load_default_segmenter

    return {"astrohvae (shipped)": load_default_segmenter(device="cpu"),
            "astrohvae --isophote 1": load_default_segmenter(device="cpu", isophote=1.0),
            "astrohvae, contrast only": load_default_segmenter(device="cpu", fragment_excess=None)}


def _auc(y, score):
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score)) if len(set(y.tolist())) == 2 else None


def sep_half_light(field, bkg, truth, radius_px):
    """AUC of sep's r-band half-light radius (larger: galaxy) by truth r bin, on sep's own matches."""
    import sep
    from scipy.spatial import cKDTree

    r = field.bands.index("r")
    img = np.ascontiguousarray(field.data[r] - bkg.level[r], np.float64)
    err = np.ascontiguousarray(bkg.rms[r], np.float64)
    sep.set_extract_pixstack(20_000_000)
    sep.set_sub_object_limit(65536)
    obj = sep.extract(img, 1.5, err=err, minarea=5, deblend_cont=0.005, filter_type="conv")
    rh, flag = sep.flux_radius(img, obj["x"], obj["y"], 6.0 * obj["a"], 0.5, normflux=None, subpix=5)
    d, j = cKDTree(np.c_[obj["x"], obj["y"]]).query(np.c_[truth["x"], truth["y"]])
    ok = d <= radius_px
    y = (np.asarray(truth["type"]) == "galaxy").astype(int)
    mag = np.asarray(truth["mag_r"])
    out = {}
    for lo, hi, name in _bins():
        sel = ok & (mag >= lo) & (mag < hi)
        out[name] = {"n": int(sel.sum()), "auc": _auc(y[sel], rh[j[sel]])}
    return out


def _bins():
    e = (-np.inf, *MAG_EDGES, np.inf)
    names = ["r<16", "16<r<18", "18<r<20", "20<r<21", "21<r<22", "r>22"]
    return [(e[i], e[i + 1], names[i]) for i in range(len(names))] + [(-np.inf, np.inf, "all")]


def catalogue_rows(path, truth_path, out_cat):
    from astrohvae.evaluation.truth import evaluate_truth
    from astrohvae.pipeline.field import run_field

    t0 = time.perf_counter()
    run_field(str(path), out=str(out_cat), device="cpu", overwrite=True)
    sec = time.perf_counter() - t0
    res = evaluate_truth(str(out_cat), str(truth_path), edges=MAG_EDGES)
    rows = {}
    for row in res["table"]:
        rows[str(row["bin"])] = {k: (None if v is None or (isinstance(v, float) and not np.isfinite(v)) else
                                     (float(v) if isinstance(v, (float, np.floating)) else int(v)))
                                 for k, v in zip(row.colnames, row) if k != "bin"}
    return rows, sec


def _f(x, nd=3):
    return "–" if x is None else f"{x:.{nd}f}"


def write_readme(report, out):
    lines = ["# Independent GalSim fields (benchmarks/galsim_bench.py)", "",
             f"Command: `{report['command']}`  ",
             f"({report['machine']}; seconds are indicative). Fields from `benchmarks/galsim_fields.py` "
             "(GalSim: Kolmogorov PSF, real SDSS stars' colours, de Vaucouleurs / exponential / RandomKnots "
             "galaxies, Poisson noise; none of `astrohvae.simulate`), "
             f"{report['size'][0]}x{report['size'][1]} px.",
             "Segmentation metrics as in `segment_bench.py`: IoU over the union of all footprints against "
             "the pixels where the brightest object's noiseless r light exceeds 0.5 (1) r sky sigma; "
             "purity and completeness by position matching (2 px); fragments per truth galaxy r < 20.", "",
             "## Segmentation", "",
             "| field | method | IoU 0.5σ truth | IoU 1σ truth | purity | compl. r<22 | fragments / r<20 galaxy "
             "| shredded r<20 | galaxies r<20 | segments | seconds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for field, rows in report["segmentation"].items():
        for name, r in rows.items():
            lines.append(f"| {field} | {name} | {_f(r['iou'])} | {_f(r.get('iou_1sigma'))} | {_f(r['purity'])} | "
                         f"{_f(r['completeness_r<22'])} | {_f(r['fragments_per_galaxy_r<20'])} | "
                         f"{_f(r['shredded_fraction_r<20'], 2)} | {r['n_galaxies_r<20']} | {r['n_segments']} | "
                         f"{r['seconds']:.1f} |")
    if report.get("catalogue"):
        lines += ["", "## Catalogue (`astrohvae run`) against the truth; peer: sep's half-light radius", "",
                  "AUC of p_galaxy (astrohvae) and of the r half-light radius (sep) by true r; each on its "
                  "own matches within 1\" (n).", "",
                  "| field | bin | astrohvae n | astrohvae AUC | star compl. | galaxy compl. | sep n | sep r_half AUC |",
                  "|---|---|---|---|---|---|---|---|"]
        for field, c in report["catalogue"].items():
            for name in [b[2] for b in _bins()]:
                a = c["astrohvae"].get(name, {})
                s = c["sep"].get(name, {})
                n = (a.get("matched_star") or 0) + (a.get("matched_galaxy") or 0)
                lines.append(f"| {field} | {name} | {n} | {_f(a.get('auc'))} | {_f(a.get('star_completeness'))} | "
                             f"{_f(a.get('galaxy_completeness'))} | {s.get('n', 0)} | {_f(s.get('auc'))} |")
            lines.append(f"| {field} | `run` seconds | {c['seconds']:.1f} | | | | | |")
    notes = Path(out) / "NOTES.md"
    if notes.is_file():
        lines += ["", notes.read_text().rstrip()]
    (Path(out) / "README.md").write_text("\n".join(lines) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[201, 202, 203])
    ap.add_argument("--size", type=int, nargs=2, default=[2048, 1489], metavar=("NX", "NY"))
    ap.add_argument("--smooth", action="store_true", help="also each seed with smooth galaxies")
    ap.add_argument("--fields", default="/tmp/astrohvae-galsim", help="folder for the simulated fields (reused)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "galsim"))
    ap.add_argument("--no-catalog", action="store_true", help="segmentation only")
    ap.add_argument("--readme-only", action="store_true", help="rewrite README.md from the existing JSON")
    args = ap.parse_args()
    out = Path(args.out)
    if args.readme_only:
        write_readme(json.loads((out / "galsim_bench.json").read_text()), out)
        return
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    from astrohvae.detection.background import estimate_background
    from astrohvae.io.readers import read_field

    out.mkdir(parents=True, exist_ok=True)
    report = {"command": "OMP_NUM_THREADS=1 python benchmarks/galsim_bench.py " + " ".join(sys.argv[1:]),
              "machine": f"{os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}",
              "size": list(args.size), "segmentation": {}, "catalogue": {}}
    segs = segmenters()
    for seed in args.seeds:
        for structure in (True, False) if args.smooth else (True,):
            path, truth_path, levels_path = field_files(seed, structure, args.fields, args.size)
            key = f"gs-{seed}" + ("" if structure else " smooth")
            field = read_field(path)
            truth = load_truth(truth_path)
            lv = np.load(levels_path)
            sim = {"level": lv["level"], "owner": lv["owner"]}
            tm, tm1 = gf.truth_mask(sim, 0.5), gf.truth_mask(sim, 1.0)
            bkg = estimate_background(field)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res, _ = sb.run_one(field, bkg, segs, sep_too=True)
            rows = {}
            for name, (s, sec) in res.items():
                rows[name] = {**sb.table_for(s, truth, tm, field.shape, truth_mask_1=tm1), "seconds": sec}
                r = rows[name]
                print(f"{key:14s} {name:26s} IoU {r['iou']:.3f} IoU1σ {r['iou_1sigma']:.3f} purity {r['purity']:.3f} "
                      f"compl<22 {r['completeness_r<22']:.3f} fragments {r['fragments_per_galaxy_r<20']:.3f} "
                      f"segments {r['n_segments']} {sec:.1f} s", flush=True)
            report["segmentation"][key] = rows
            if structure and not args.no_catalog:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    cat_rows, sec = catalogue_rows(path, truth_path, Path(args.fields) / f"{path.stem}.cat.fits")
                    sep_rows = sep_half_light(field, bkg, truth, 1.0 / gf.PIXEL)
                report["catalogue"][key] = {"astrohvae": cat_rows, "sep": sep_rows, "seconds": sec}
                for name in ("18<r<20", "20<r<21", "21<r<22", "r>22", "all"):
                    print(f"{key:14s} {name:8s} AUC astrohvae {_f(cat_rows.get(name, {}).get('auc'))} "
                          f"sep r_half {_f(sep_rows[name]['auc'])}", flush=True)
    (out / "galsim_bench.json").write_text(json.dumps(report, indent=1))
    write_readme(report, out)
    print(f"wrote {out / 'galsim_bench.json'} and README.md")


if __name__ == "__main__":
    main()
