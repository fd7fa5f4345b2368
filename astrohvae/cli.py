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


class _Group(click.Group):
    """Click group that turns astrohvae errors into one-line messages."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except AstroHVAEError as exc:
            click.echo(f"astrohvae: error: {exc}", err=True)
            sys.exit(2)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="astrohvae")
def main():
    """Unsupervised star/galaxy catalogues from five-band SDSS-style imaging."""


def _parse_size(text):
    try:
        nx, ny = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not of the form NXxNY, e.g. 2048x1489")
    return nx, ny


# --- simulate (owner: astrohvae/simulate.py) ---------------------------------
@main.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--seed", type=int, required=True, help="Random seed; the same seed gives the same field.")
@click.option("--size", default="2048x1489", show_default=True, help="Field size NXxNY in pixels.")
@click.option("--star-fraction", type=float, default=None, help="Fraction of stars (default: a realistic, magnitude-dependent mix).")
def simulate(out, seed, size, star_fraction):
    """Write a simulated SDSS field (five frames + truth) into folder OUT."""
    from astrohvae.simulate import write_simulation

    paths = write_simulation(out, seed=seed, size=_parse_size(size), star_fraction=star_fraction)
    for p in paths:
        click.echo(str(p))


# --- end simulate ------------------------------------------------------------
