"""Reading fields and writing outputs (no torch in here)."""

from astrohvae.io.atomic import atomic_path
from astrohvae.io.field import Field
from astrohvae.io.readers import read_field

__all__ = ["Field", "atomic_path", "read_field"]
