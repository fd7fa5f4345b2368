"""The ``astrohvae`` command line: parse, call one library function, report.

Every command is a thin wrapper around a function a notebook can call too.
Errors derived from `astrohvae.errors.AstroHVAEError` are printed as one line
(``astrohvae: error: FILE: PROBLEM``) with exit status 2.

Each command's block below is owned by the module it calls; keep heavy
imports (torch, dask.distributed) inside the command bodies so that
``astrohvae --help`` stays fast.
"""

from __future__ import annotations

import sys

import click

from astrohvae import __version__
from astrohvae.errors import AstroHVAEError
from astrohvae.stamps.preprocess import REPRESENTATIONS
from astrohvae.segmentation.network import DEFAULT_VARIANT

REPRESENTATION_NAMES = tuple(REPRESENTATIONS)
CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    """`warnings.showwarning` for the command line: ``astrohvae: warning: TEXT`` on one line."""
    click.echo(f"astrohvae: warning: {' '.join(str(message).split())}", err=True)


class _Group(click.Group):
    """Click group that turns astrohvae errors (and usage errors) into one-line messages.

    It also prints warnings as one line and removes this process's temporary
    outputs on SIGTERM/SIGHUP (`astrohvae.io.atomic.install_signal_cleanup`).
    """

    def invoke(self, ctx):
        import warnings

        from astrohvae.io.atomic import install_signal_cleanup

        warnings.showwarning = _one_line_warning
        install_signal_cleanup()
        try:
            return super().invoke(ctx)
        except AstroHVAEError as exc:
            click.echo(f"astrohvae: error: {' '.join(str(exc).split())}", err=True)
            sys.exit(2)
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else "astrohvae"
            msg = " ".join(exc.format_message().split())
            click.echo(f"astrohvae: error: {msg} (see '{where} -h')", err=True)
            sys.exit(exc.exit_code)


@click.group(cls=_Group, context_settings=CONTEXT_SETTINGS)
@click.version_option(__version__, prog_name="astrohvae")
def main():
    """Unsupervised star/galaxy catalogues from five-band SDSS-style imaging."""


def _verbosity(f):
    """``--quiet`` (no progress bar or progress lines) and ``--verbose`` (warnings and step timings)."""
    f = click.option("-v", "--verbose", is_flag=True, help="Show library warnings (one line each) and timings.")(f)
    f = click.option("-q", "--quiet", is_flag=True, help="No progress bar or progress lines on stderr.")(f)
    return f


def _overwrite_option(what):
    return click.option("--overwrite", is_flag=True,
                        help=f"Replace an existing {what} written by astrohvae (never any other file).")


def _check_device(ctx, param, value):
    """Resolve ``--device`` before any work: one line instead of a traceback when it is not available."""
    if value is None or str(value).strip().lower() == "auto":
        return value
    from astrohvae.device import resolve_device
    from astrohvae.errors import InputError

    try:
        resolve_device(value)
    except ValueError as exc:
        raise InputError("--device", str(exc)) from None
    return value


def _device_option(default="auto"):
    return click.option("--device", default=default, show_default=True, callback=_check_device,
                        help="auto (cuda when available, else cpu), cpu, cuda or cuda:N.")


def _check_nsigma(ctx, param, value):
    import math

    from astrohvae.errors import InputError

    if value is not None and not (math.isfinite(value) and value > 0):
        raise InputError("--nsigma", f"{value!r} is not a finite number > 0")
    return value


def _inputs(items):
    from astrohvae.pipeline.inputs import input_paths

    return input_paths(list(items))


def _parse_size(text):
    from astrohvae.errors import InputError

    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError("--size", f"{text!r} is not of the form NXxNY, e.g. 2048x1489") from None
    return nx, ny


# --- simulate (owner: astrohvae/simulate/field.py) ---------------------------------
@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", type=click.IntRange(0, 53_999_999_999), required=True,
              help="Random seed; the same seed gives the same field (and names it RUN-CAMCOL-FIELD).")
@click.option("--size", default="2048x1489", show_default=True, help="Field size NXxNY in pixels.")
@click.option("--star-fraction", type=click.FloatRange(0.0, 1.0), default=None,
              help="Fraction of all simulated objects that are stars (default: the observed star and galaxy number counts).")
@click.option("--adjacent", type=click.IntRange(1, 100), default=None,
              help="Write this many consecutive fields of one scan into OUT/RUN-CAMCOL-FIELD folders.")
@click.option("--overlap", type=click.IntRange(0), default=128, show_default=True,
              help="With --adjacent: rows each field shares with the next (SDSS: 128).")
@click.option("--band-offset-scale", type=click.FloatRange(0.0, 10.0), default=1.0, show_default=True,
              help="Multiply the bands' offsets from r (drawn as real SDSS frames are offset) by this; "
                   "e.g. 2 for a stress test of the edge strips seen in fewer bands.")
@_overwrite_option("simulation of the same seed in OUT")
@_verbosity
def simulate(out, seed, size, star_fraction, adjacent, overlap, band_offset_scale, overwrite, quiet, verbose):
    """Write a simulated SDSS field (five frames + truth) into folder OUT."""
    from astrohvae.errors import InputError
    from astrohvae.simulate.field import MAX_PIXELS
    from astrohvae.simulate.io import write_adjacent, write_simulation

    nx, ny = _parse_size(size)
    if nx < 16 or ny < 16:
        raise InputError("--size", f"{size!r}: the field must be at least 16x16 pixels")
    if nx * ny > MAX_PIXELS:
        raise InputError("--size", f"{size!r}: at most {MAX_PIXELS:,} pixels (e.g. 6000x6000) can be simulated")
    if adjacent is not None:
        if overlap >= ny:
            raise InputError("--overlap", f"{overlap} rows: must be fewer than the field's {ny}")
        for p in write_adjacent(out, seed=seed, n=adjacent, size=(nx, ny), overlap=overlap,
                                star_fraction=star_fraction, band_offset_scale=band_offset_scale):
            click.echo(str(p))
        return
    paths = write_simulation(out, seed=seed, size=(nx, ny), star_fraction=star_fraction, overwrite=overwrite,
                             band_offset_scale=band_offset_scale)
    for p in paths:
        click.echo(str(p))


# --- end simulate ------------------------------------------------------------


# --- run (owner: astrohvae/pipeline/field.py) --------------------------------------
def _quiet_warnings(verbose=False):
    """Keep stderr for the one-line error: silence library warnings (shown, one line each, with --verbose)."""
    import warnings

    from astropy import log

    if verbose:
        warnings.simplefilter("default")
        return
    warnings.simplefilter("ignore")
    log.setLevel("ERROR")


@main.command()
@click.argument("field", nargs=-1, type=click.Path())
@click.option("--out", "out", type=click.Path(dir_okay=False), default=None,
              help="Catalogue FITS file; missing folders are created [default: ./<field>.cat.fits].")
@click.option("--weights", type=click.Path(), default=None,
              help="Classifier weights folder (model.safetensors + config.json) [default: shipped].")
@_device_option()
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True,
              help="Stamps per classifier batch.")
@click.option("--preview/--no-preview", default=False, help="Also write a PNG of the field with star/galaxy markers.")
@click.option("--preview-out", type=click.Path(dir_okay=False), default=None,
              help="Preview PNG [default: the catalogue name with .png].")
@click.option("--segmenter", type=click.Choice(["auto", "network", "photutils"]), default="auto",
              show_default=True, help="Segmentation: the shipped network (auto: when installed) or photutils.")
@click.option("--nsigma", type=float, default=1.5, show_default=True, callback=_check_nsigma,
              help="Detection threshold of the photutils segmentation, in sigma (finite, > 0).")
@click.option("--isophote", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Level the footprints are grown to, in units of the r band's per-pixel sky sigma "
                   "(network segmenter; header card SEGISO).")
@click.option("--example", is_flag=True,
              help="Run on the embedded example (a 1024x744 field simulated with a fixed seed).")
@click.option("--regions", is_flag=True,
              help="Also write a DS9 region file beside the catalogue (<out> with .reg).")
@_overwrite_option("catalogue (and preview, regions)")
@_verbosity
def run(field, out, weights, device, batch_size, preview, preview_out, segmenter, nsigma, isophote, example, regions,
        overwrite, quiet, verbose):
    """Catalogue one field: segmentation, stamps, star/galaxy classification.

    FIELD is any input the reader takes: an SDSS field folder, one frame
    (its sibling bands are found), several frame files, a glob, a
    multi-extension FITS with FILTER per HDU, or a cube with BANDS.
    """
    _quiet_warnings(verbose)
    from astrohvae.pipeline.field import run_field
    from astrohvae.pipeline.inputs import example_field

    if example == bool(field):
        raise click.UsageError("give a FIELD or --example (not both)")
    if example:
        src = example_field()
        out = out or "example.cat.fits"
    else:
        src = field[0] if len(field) == 1 else list(field)
    res = run_field(src, out, weights=weights, device=device, batch_size=batch_size, preview=preview,
                    preview_out=preview_out, segmenter=segmenter, nsigma=nsigma, isophote=isophote, regions=regions,
                    overwrite=overwrite, progress=not quiet and sys.stderr.isatty())
    frac = f"{res.star_fraction:.3f}" if res.rows else "n/a"
    click.echo(f"catalogue: {res.catalog}  ({res.rows} sources: {res.n_star} stars, {res.n_galaxy} galaxies, "
               f"star fraction {frac}; {res.seconds:.1f} s)")
    if res.preview:
        click.echo(f"preview:   {res.preview}")
    if regions:
        from astrohvae.pipeline.field import regions_path

        click.echo(f"regions:   {regions_path(res.catalog)}")
    if verbose:
        click.echo("timings:   " + ", ".join(f"{k} {v:.2f} s" for k, v in res.timings.items()), err=True)


# --- end run -----------------------------------------------------------------


# --- survey (owner: astrohvae/pipeline/survey.py) -------------------------------------
@main.command()
@click.argument("fields", nargs=-1, required=True, type=click.Path())
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False),
              help="Output folder: one <field>.cat.fits per field, survey.json ledger, survey-catalogue.parquet/.fits.")
@click.option("--scheduler", default=None, help="Address of a running dask scheduler (default: a LocalCluster).")
@click.option("--connect-timeout", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True,
              help="Seconds to wait for --scheduler to answer.")
@click.option("--cluster", type=click.Choice(["slurm", "pbs", "sge"]), default=None,
              help="Start workers as batch jobs through dask-jobqueue (options below).")
@click.option("--jobs", type=click.IntRange(1), default=1, show_default=True, help="--cluster: batch jobs to start.")
@click.option("--cores", type=click.IntRange(1), default=None,
              help="--cluster: cores per job (one single-threaded worker each) [default 1].")
@click.option("--memory", default=None, help="--cluster: memory per job, e.g. 16GB [default 4GiB].")
@click.option("--walltime", default=None, help="--cluster: wall time per job, e.g. 02:00:00 [default 01:00:00].")
@click.option("--queue", default=None, help="--cluster: queue / partition.")
@click.option("--account", default=None, help="--cluster: account (SGE: project) to charge.")
@click.option("--dask-config", type=click.Path(), default=None,
              help="--cluster: dask YAML file (jobqueue: slurm: ...) read first; the options above override it.")
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="LocalCluster worker processes (one thread each).")
@click.option("--memory-limit", default="4GiB", show_default=True, help="Memory limit per LocalCluster worker.")
@click.option("--retries", type=click.IntRange(0), default=2, show_default=True,
              help="Times a field is restarted on another worker after its worker died; then it is recorded failed.")
@click.option("--weights", type=click.Path(), default=None, help="Classifier weights folder [default: shipped].")
@click.option("--device", default="auto", show_default=True, help="Device on the workers: auto, cpu, cuda.")
@click.option("--batch-size", type=click.IntRange(1), default=256, show_default=True)
@click.option("--segmenter", type=click.Choice(["auto", "network", "photutils"]), default="auto",
              show_default=True)
@click.option("--nsigma", type=float, default=1.5, show_default=True, callback=_check_nsigma,
              help="Detection threshold of the photutils segmentation, in sigma (finite, > 0).")
@click.option("--isophote", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Level the footprints are grown to, in units of the r band's per-pixel sky sigma "
                   "(network segmenter; header card SEGISO).")
@click.option("--preview/--no-preview", default=False, help="Also write <field>.cat.png per field.")
@click.option("--combine/--no-combine", default=True, show_default=True,
              help="Write the combined survey catalogue (field column, primary flag) at the end.")
@click.option("--progress/--no-progress", default=True, show_default=True,
              help="The progress bar over the fields (--quiet turns it off too).")
@click.option("--regions", is_flag=True, help="Also write <field>.cat.reg (DS9 regions) per field.")
@_verbosity
def survey(fields, out_dir, scheduler, connect_timeout, cluster, jobs, cores, memory, walltime, queue, account,
           dask_config, workers, memory_limit, retries, weights, device, batch_size, segmenter, nsigma, isophote,
           preview, combine, progress, regions, quiet, verbose):
    """Catalogue many FIELDS on dask.distributed (resumable).

    Fields whose catalogue is already complete in OUT (and made with the same
    weights) are skipped; a field that fails is recorded (error in
    OUT/survey.json and the summary) and retried by the next run.  Exit
    status 1 when any field failed.
    """
    _quiet_warnings(verbose)
    progress = progress and not quiet
    from pathlib import Path

    from astrohvae.errors import InputError
    from astrohvae.pipeline.survey import jobqueue_cluster, run_survey

    if weights is not None:
        w = Path(weights)
        if not (w / "model.safetensors").is_file() or not (w / "config.json").is_file():
            raise InputError(w, "not a weights folder (model.safetensors and config.json expected)")
    if cluster and scheduler:
        raise click.UsageError("give --scheduler or --cluster, not both")
    jq = None
    if cluster:
        jq = jobqueue_cluster(cluster, cores=cores, memory=memory, walltime=walltime, queue=queue, account=account,
                              config=dask_config)
    res = run_survey(list(fields), out_dir, scheduler=scheduler, workers=workers, weights=weights, device=device,
                     batch_size=batch_size, segmenter=segmenter, nsigma=nsigma, isophote=isophote,
                     memory_limit=memory_limit, progress=progress, preview=preview, retries=retries,
                     connect_timeout=connect_timeout, cluster=jq, jobs=jobs, combine=combine, regions=regions)
    tab = res.table
    click.echo("\n".join(tab.pformat(max_lines=-1, max_width=-1)))
    done = int((tab["status"] != "failed").sum()) if len(tab) else 0
    click.echo(f"{done}/{len(tab)} fields complete, {res.n_failed} failed; {res.wall_seconds:.1f} s on "
               f"{res.n_workers} worker(s); ledger {res.ledger}")
    if res.combined:
        c = res.combined
        click.echo(f"survey catalogue: {c['parquet']} and .fits ({c['rows']} rows from {c['fields']} fields, "
                   f"{c['primary']} primary)")
    if res.n_failed:
        sys.exit(1)


@main.command()
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--radius", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Match radius (arcsec) of one source seen by two overlapping fields.")
@_verbosity
def combine(out_dir, radius, quiet, verbose):
    """Rebuild OUT_DIR/survey-catalogue.parquet and .fits from its per-field catalogues."""
    _quiet_warnings(verbose)
    from astrohvae.pipeline.combine import combine_catalogues

    c = combine_catalogues(out_dir, radius=radius)
    click.echo(f"survey catalogue: {c['parquet']} and {c['fits']} ({c['rows']} rows from {c['fields']} fields, "
               f"{c['primary']} primary)")


# --- end survey --------------------------------------------------------------


# --- segment (owner: astrohvae/segmentation/network.py) -----------------------------------
@main.command()
@click.argument("field", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output FITS (SEGMAP [+ CLASSMAP]); missing folders are created.")
@click.option("--variant", type=click.Choice(["ae-res-hc", "ae-hc", "vae-hc"]), default=DEFAULT_VARIANT,
              show_default=True, help="Shipped segmenter variant (ignored with --weights).")
@click.option("--weights", type=click.Path(file_okay=False), default=None, help="Segmenter weights folder.")
@click.option("--classify", is_flag=True, help="Classify the segments and write CLASSMAP (0 bkg, 1 star, 2 galaxy).")
@click.option("--plots", is_flag=True, help="Also write <out>-segment.png and <out>-segment-zoom.png.")
@click.option("--isophote", type=click.FloatRange(min=0.05), default=0.5, show_default=True,
              help="Level the footprints are grown to, in units of the r band's per-pixel sky sigma "
                   "(network segmenter; header card SEGISO).")
@_device_option()
@_overwrite_option("segmentation (and plots)")
@_verbosity
def segment(field, out, variant, weights, classify, plots, isophote, device, overwrite, quiet, verbose):
    """Segment FIELD (frames, a folder, a MEF or a cube) without labels; write SEGMAP to OUT."""
    import warnings
    from pathlib import Path

    from astrohvae.io.atomic import check_output
    from astrohvae.pipeline.inputs import check_field, read_input
    from astrohvae.pipeline.segment import segment_file

    if not verbose:
        warnings.filterwarnings("ignore", module="photutils")
    inputs = _inputs(field)
    check_output(out, inputs=inputs, kind="segmap", overwrite=overwrite)
    if plots:
        stem = Path(out)
        stem = stem.with_name(stem.name[:-5] if stem.name.endswith(".fits") else stem.name)
        for suffix in ("-segment.png", "-segment-zoom.png"):
            check_output(f"{stem}{suffix}", inputs=inputs, kind="png", overwrite=overwrite)
    src = list(field) if len(field) > 1 else field[0]
    fld = read_input(src)  # every reader failure as one line
    check_field(fld, src)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    res = segment_file(fld, out, variant=variant, weights=weights, classify=classify, plots=plots, device=device,
                       isophote=isophote)
    click.echo(f"{res['out']}: {res['n_sources']} sources; segmentation {res['segment_seconds']:.1f} s, "
               f"total {res['seconds']:.1f} s")
    for p in res["plots"]:
        click.echo(str(p))


# --- end segment -------------------------------------------------------------


# --- train (owner: astrohvae/models/engine.py) ---------------------------------------
@main.command()
@click.argument("store", type=click.Path(exists=True, file_okay=False))
@click.option("--model", "model_kind", type=click.Choice(["avr", "hvae", "vae", "vae-revised", "ae"]),
              default="avr", show_default=True,
              help="avr: the shipped A+Vr classifier; hvae: the paper's hierarchical AE -> VAE recipe; "
                   "vae: V+M; vae-revised: Vr+M; ae: the AE alone (features, not usable by 'run').")
@click.option("--divergence", type=click.Choice(["sc", "dkl", "aw", "pw", "quad"]), default=None,
              help="Revised prior term of vae-revised [default: sc] or hvae [default: exact KL by quadrature].")
@click.option("--prior", nargs=2, type=float, default=None, metavar="M S",
              help="Two-peak prior 0.5 N(-M, S^2) + 0.5 N(M, S^2) of hvae / vae-revised [default: 1 0.5].")
@click.option("--beta", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="Weight of the prior term (hvae, vae, vae-revised).")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Weights folder for 'astrohvae run --weights' (written under a temporary name, then renamed).")
@click.option("--epochs", type=click.IntRange(1), default=None,
              help="Epochs of the image network [default: the model's own: avr 4, others 6].")
@click.option("--latent-epochs", type=click.IntRange(1), default=None,
              help="Epochs of the latent VAE of avr / hvae [default: 40].")
@click.option("--batch-size", type=click.IntRange(2), default=None, help="[default: 128]")
@click.option("--lr", type=click.FloatRange(0, min_open=True), default=None, help="[default: 0.002]")
@click.option("--latent-dim", type=click.IntRange(1), default=None,
              help="ae / avr / hvae: the AE latent [default: 30]; vae: its latent [default: 4].")
@click.option("--per-field", type=click.IntRange(3), default=500, show_default=True,
              help="Stamps per field: all bright ones (S/N >= 50, up to half) plus a random draw.")
@click.option("--max-stamps", type=click.IntRange(3), default=None, help="Then at most this many in all.")
@click.option("--representation", type=click.Choice(sorted(REPRESENTATION_NAMES)), default=None, help="Network input [default: the model's own: avr source_asinh, others lupt].")
@click.option("--augment/--no-augment", default=None, help="Random 90-degree rotations and flips [default: avr on].")
@click.option("--colour-prior", is_flag=True,
              help="avr: the former colour-template likelihood instead of the default stellar-locus one.")
@_device_option()
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--plots", is_flag=True, help="Write loss curves and the latent histogram (PNG) into OUT.")
@click.option("--checkpoint", "checkpoint_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for resumable checkpoints (one per network, written every epoch): the same command "
                   "run again continues an interrupted training.")
@_overwrite_option("weights folder")
@_verbosity
@click.option("--threads", type=click.IntRange(1), default=None,
              help="CPU threads for torch (default: torch's choice; 1 is faster on a busy shared machine).")
def train(store, model_kind, divergence, prior, beta, out, epochs, latent_epochs, batch_size, lr, latent_dim,
          per_field, max_stamps, representation, augment, colour_prior, device, seed, plots, checkpoint_dir,
          overwrite, quiet, verbose, threads):
    """Fit a classifier on the stamp store STORE and write it to --out.

    With no --model this is exactly how the shipped classifier is made;
    'astrohvae run --weights OUT' and 'astrohvae survey --weights OUT' use it.
    """
    from astrohvae.pipeline.train import train_from_store

    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        res = train_from_store(store, out, model=model_kind, divergence=divergence, prior=prior, beta=beta,
                               epochs=epochs, latent_epochs=latent_epochs, batch_size=batch_size, lr=lr,
                               latent_dim=latent_dim, representation=representation, augment=augment,
                               colour_prior=colour_prior, device=device, seed=seed, per_field=per_field,
                               max_stamps=max_stamps, plots=plots, checkpoint_dir=checkpoint_dir,
                               progress=not quiet, overwrite=overwrite)
    except ValueError as exc:
        raise click.UsageError(str(exc))
    click.echo(f"trained {res['method']} ({model_kind}) on {res['n']} stamps of {len(res['fields'])} fields "
               f"in {res['seconds']:.0f} s -> {res['out']}")
    click.echo(f"  model sha256 {res['weights_sha256']}")


# --- end train ---------------------------------------------------------------


# --- stamps (owner: astrohvae/stamps/store.py) --------------------------------------
@main.command()
@click.argument("fields", nargs=-1, required=True, type=click.Path())
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Stamp store folder (zarr).")
@click.option("--segmenter", type=click.Choice(["auto", "network", "photutils"]), default="auto", show_default=True,
              help="As for 'run' (the same default), so the store holds the stamps 'run' classifies.")
@click.option("--nsigma", type=click.FloatRange(0, min_open=True), default=1.5, show_default=True,
              callback=_check_nsigma,
              help="Detection threshold of the photutils segmenter, in units of the detection image's noise.")
@_device_option()
@click.option("--workers", type=click.IntRange(1), default=1, show_default=True,
              help="Fields processed at once (memory grows with this, not with the number of fields).")
@click.option("--overwrite", is_flag=True, help="Replace an existing store instead of appending to it.")
@_verbosity
def stamps(fields, out, segmenter, nsigma, device, workers, overwrite, quiet, verbose):
    """Cut 64x64x5 stamps of every source in FIELDS into the zarr store --out.

    Each FIELD is a folder of SDSS frames, a frame file or a MEF.  Fields
    already in the store are skipped, new ones appended; an interrupted run
    can simply be repeated.
    """
    from pathlib import Path

    from astrohvae.errors import InputError
    from astrohvae.stamps.store import build_store

    for f in fields:
        if not Path(f).exists():
            raise InputError(f, "no such file or folder")
    s = build_store(list(fields), out, append=not overwrite, nsigma=nsigma, progress=not quiet,
                    workers=workers, segmenter=segmenter, device=device)
    skipped = f", skipped {len(s['fields_skipped'])} already stored" if s["fields_skipped"] else ""
    click.echo(f"added {s['added']} stamps from {len(s['fields_added'])} fields{skipped}; "
               f"{s['out']} holds {s['total']} stamps from {s['n_fields']} fields")


# --- end stamps --------------------------------------------------------------


# --- evaluate (owner: astrohvae/evaluation/metrics.py) ---------------------------------
@main.command()
@click.argument("test", type=click.Path(exists=True))
@click.option("--train", "train_path", type=click.Path(exists=True), default=None,
              help="Stamp store to fit the methods on (unlabelled use; default: TEST itself).")
@click.option("--truth", type=click.Path(exists=True), default=None,
              help="With a catalogue as TEST: a truth list (FITS/CSV with ra/dec or x/y and a class column: "
                   "star/galaxy, SDSS TYPE 3/6, +-1; without one, a star list), or a simulator folder.")
@click.option("--radius", type=click.FloatRange(0, min_open=True), default=1.0, show_default=True,
              help="With --truth: match radius in arcsec (nearest catalogue source).")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), default=None,
              help="Folder for the table (classification.md, .csv) and the ROC plot (classification_roc.png); "
                   "required for a stamp store, optional with --truth.")
@click.option("--methods", default="classical,a+vr,a+vr-ae,a+vr-paper,v+m,vr+m-sc,vr+m-dkl,vr+m-aw,vr+m-pw,probe",
              show_default=True, help="Comma-separated method keys.")
@click.option("--seeds", default=5, show_default=True, type=int, help="Training seeds per method.")
@click.option("--quick", is_flag=True, help="Tiny training (smoke test).")
@_overwrite_option("table and ROC plot in the folder")
@_verbosity
def evaluate(test, train_path, truth, radius, out_dir, methods, seeds, quick, overwrite, quiet, verbose):
    """Score star/galaxy methods against truth; print the table, write it and the ROC plot.

    TEST is a labelled stamp store (truth_type from the simulator), or a
    catalogue FITS from `astrohvae run` together with --truth: each truth
    object is matched to the nearest source within --radius and the classes
    are tabulated by r magnitude (the list's own, else the catalogue's).
    """
    from pathlib import Path

    import astrohvae.evaluation.metrics as ev
    from astrohvae.evaluation.baselines import method_factories
    from astrohvae.evaluation.data import load_stamps, write_rows_csv
    from astrohvae.evaluation.truth import evaluate_truth, format_truth_table
    from astrohvae.viz.roc import plot_roc
    from astrohvae.errors import InputError
    from astrohvae.io.atomic import atomic_path, check_output

    out = Path(out_dir) if out_dir else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise InputError(out, "exists and is not a folder")
        inputs = [p for p in (test, train_path, truth) if p is not None]
        for name, kind in (("classification.md", "text"), ("classification.csv", "text"),
                           ("classification_roc.png", "png")):
            check_output(out / name, inputs=inputs, kind=kind, overwrite=overwrite)
    if truth is not None:
        try:
            res = evaluate_truth(test, truth, radius=radius)
        except ValueError as exc:
            raise InputError(test, str(exc)) from None
        mode = "star list: star recall" if res["star_only"] else "stars and galaxies"
        click.echo(f"{res['n_matched']} of {res['n_truth']} truth objects matched within {radius:g}\" "
                   f"({mode}); r from the list, else the catalogue's mag_r")
        table = format_truth_table(res["table"])
        click.echo(table)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            with atomic_path(out / "classification.md") as tmp:
                Path(tmp).write_text(table + "\n")
            with atomic_path(out / "classification.csv") as tmp:
                res["table"].write(tmp, format="ascii.csv", overwrite=True)
            y = res["y"]
            if (y == 0).any() and (y == 1).any():
                plot_roc(y, {Path(test).name: [res["p_galaxy"]]}, out / "classification_roc.png")
        return
    if out is None:
        raise click.UsageError("-o/--out is required when TEST is a stamp store")
    if Path(test).suffix.lower() in (".fits", ".fit"):
        raise InputError(test, "a catalogue needs --truth")
    out.mkdir(parents=True, exist_ok=True)
    test_st = load_stamps(test)
    train_st = load_stamps(train_path) if train_path else test_st
    y, _ = ev.labels_from_meta(test_st.meta)
    if not ((y == 0).any() and (y == 1).any()):
        raise InputError(test, "stamps hold no truth labels of both classes (truth_type)")
    facts = method_factories([m.strip().lower() for m in methods.split(",") if m.strip()], quick=quick)
    rows, _ = ev.evaluate(train_st, test_st, facts, seeds=range(seeds), roc_path=out / "classification_roc.png",
                          progress=None if quiet else
                          lambda n, s, a: click.echo(f"{n} seed {s}: AUC {a:.3f}", err=True))
    table = ev.format_table(rows)
    click.echo(table)
    with atomic_path(out / "classification.md") as tmp:
        Path(tmp).write_text(table + "\n")
    write_rows_csv(rows, out / "classification.csv")


# --- end evaluate ------------------------------------------------------------


if __name__ == "__main__":  # ``python -m astrohvae.cli``, as the console script
    main()
