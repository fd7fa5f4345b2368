"""ROC curves."""

from __future__ import annotations

import numpy as np

__all__ = ['plot_roc']

def plot_roc(y, runs, path, title="Star/galaxy ROC (positive class: galaxy)"):
    """Write the ROC curves (first seed of every method, AUC mean ± std in the legend) to a PNG.

    The file is written atomically.
    """
    import matplotlib

    from astrohvae.evaluation.metrics import binary_metrics

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    from astrohvae.io.atomic import atomic_path

    y = np.asarray(y)
    ok = (y == 0) | (y == 1)
    fig, ax = plt.subplots(figsize=(6, 5.5))
    for name, plist in runs.items():
        aucs = [binary_metrics(y, p)["auc"] for p in plist]
        p = np.asarray(plist[0], dtype=float)
        good = ok & np.isfinite(p)
        fpr, tpr, _ = roc_curve(y[good], p[good])
        ax.plot(fpr, tpr, label=f"{name}: AUC {np.mean(aucs):.3f} ± {np.std(aucs):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (stars called galaxies)")
    ax.set_ylabel("true positive rate (galaxies found)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return path
