"""Choice of the torch device: ``'auto'`` -> CUDA when available, else CPU."""

from __future__ import annotations

__all__ = ["resolve_device"]


def resolve_device(device="auto"):
    """Return a `torch.device` for ``'auto'``, ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a device.

    Parameters
    ----------
    device : str or torch.device
        ``'auto'`` picks ``cuda`` when ``torch.cuda.is_available()``, else ``cpu``.

    Raises
    ------
    ValueError
        If CUDA is asked for but not available, or the name is not a device.
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    else:
        name = str(device or "auto").strip().lower()
        if name == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        try:
            dev = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"unknown device {device!r} (use auto, cpu or cuda)") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for but CUDA is not available on this machine")
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported (use auto, cpu or cuda)")
    return dev
