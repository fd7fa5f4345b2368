"""``python -m astrohvae``: the same command line as the ``astrohvae`` console script."""

from astrohvae.cli import main

main()
