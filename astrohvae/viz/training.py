"""Training curves."""

from __future__ import annotations

import numpy as np


def training_plots(folder, est, histories, stamps):
    """Loss curves of every network; for a classifier the histogram of its latent by class."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = [(k, h) for k, h in histories.items() if h]
    if stages:
        fig, axes = plt.subplots(1, len(stages), figsize=(5 * len(stages), 3.6), squeeze=False)
        for ax, (name, h) in zip(axes[0], stages):
            ax.plot(h["epoch"], h["train_loss"], "o-", label="train")
            ax.set_xlabel("epoch")
            ax.set_ylabel("loss")
            ax.set_title(name.replace("_", " "))
            ax.legend()
        fig.tight_layout()
        fig.savefig(folder / "loss.png", dpi=110)
        plt.close(fig)
    if not callable(getattr(est, "predict_proba", None)):
        return
    p, t = est.predict_proba(stamps), est.transform(stamps)
    z = t.get("z_hvae", t.get("embedding"))
    z = np.asarray(z).reshape(len(p), -1)[:, 0]
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    bins = np.linspace(np.percentile(z, 0.5), np.percentile(z, 99.5), 60)
    ax.hist(z[p < 0.5], bins=bins, color="tab:blue", alpha=0.7, label=f"star ({np.count_nonzero(p < 0.5)})")
    ax.hist(z[p >= 0.5], bins=bins, color="tab:red", alpha=0.7, label=f"galaxy ({np.count_nonzero(p >= 0.5)})")
    ax.set_xlabel("classifier latent (training stamps)")
    ax.set_ylabel("stamps")
    ax.set_title(est.method)
    ax.legend()
    fig.tight_layout()
    fig.savefig(folder / "latent_hist.png", dpi=110)
    plt.close(fig)
