"""The preview PNG: RA/Dec axes, markers sized by the source, 'simulated' when it is."""

from __future__ import annotations

import numpy as np
from astropy.table import Table

from astrohvae.io.field import Field
from astrohvae.viz.preview import is_simulated, write_preview


def _table():
    t = Table()
    t["id"] = np.array([1, 2], np.int32)
    t["x"] = [20.0, 40.0]
    t["y"] = [20.0, 30.0]
    t["class"] = ["star", "galaxy"]
    t["semimajor_axis"] = np.array([1.5, 4.0], np.float32)
    t["semiminor_axis"] = np.array([1.4, 2.0], np.float32)
    t["orientation"] = np.array([0.0, 30.0], np.float32)
    t["kron_radius"] = np.array([1.2, 1.5], np.float32)
    return t


def _record_texts(monkeypatch):
    import matplotlib.figure

    texts = []
    orig = matplotlib.figure.Figure.text

    def text(self, x, y, s, *a, **k):
        texts.append(s)
        return orig(self, x, y, s, *a, **k)

    monkeypatch.setattr(matplotlib.figure.Figure, "text", text)
    return texts


def test_simulated_field_preview_has_sky_axes_sized_markers_and_says_simulated(tmp_path, monkeypatch):
    import matplotlib.collections
    from astropy.visualization.wcsaxes import WCSAxes

    from astrohvae.simulate.field import simulate_field

    field = simulate_field(3, size=(96, 64)).field
    assert is_simulated(field)
    texts = _record_texts(monkeypatch)
    axes, ellipses = [], []
    orig_add = matplotlib.axes.Axes.add_collection

    def add_collection(self, coll, *a, **k):
        axes.append(self)
        ellipses.append(coll)
        return orig_add(self, coll, *a, **k)

    monkeypatch.setattr(matplotlib.axes.Axes, "add_collection", add_collection)
    out = write_preview(tmp_path / "p.png", field, _table(), title="f: 2 sources")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "f: 2 sources (simulated)" in texts
    assert isinstance(axes[0], WCSAxes)
    widths = [np.asarray(c._widths) for c in ellipses if isinstance(c, matplotlib.collections.EllipseCollection)]
    # star: circle of radius 3 sqrt(ab); galaxy: the Kron ellipse, 2.5 x 1.5 x the semi-axes (widths are halves)
    assert np.allclose(widths[0], 3 * np.sqrt(1.5 * 1.4), rtol=1e-3)
    assert np.allclose(widths[1], 2.5 * 1.5 * 4.0, rtol=1e-3)


def test_real_looking_field_is_not_simulated(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    field = Field(rng.normal(0, 0.01, (5, 64, 80)).astype(np.float32), np.zeros((5, 64, 80), bool), name="x")
    assert not is_simulated(field)
    texts = _record_texts(monkeypatch)
    write_preview(tmp_path / "p.png", field, _table(), title="x: 2 sources")
    assert "x: 2 sources" in texts and not any("simulated" in t for t in texts)
