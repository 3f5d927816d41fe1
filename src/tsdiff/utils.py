"""Small helpers shared by the core: broadcasting, devices and random generators."""

from __future__ import annotations

import torch


def append_dims(x: torch.Tensor, target_ndim: int) -> torch.Tensor:
    """Append trailing singleton dimensions so a per-sample value broadcasts against a batch.

    ``x`` of shape ``(batch,)`` becomes ``(batch, 1, ..., 1)`` with ``target_ndim`` dimensions, which
    works for sequences ``(batch, length, channels)`` as well as any other layout.
    """
    missing = target_ndim - x.ndim
    if missing < 0:
        raise ValueError(f"append_dims: input has {x.ndim} dims, more than the target {target_ndim}")
    return x.reshape(*x.shape, *([1] * missing))


def resolve_device(device: str | torch.device | None = None, module: torch.nn.Module | None = None) -> torch.device:
    """Device from an explicit setting, else from a module's parameters, else CPU.

    ``"auto"`` picks CUDA when it is available. Nothing here hard-codes an accelerator.
    """
    if device is not None and str(device) != "auto":
        return torch.device(device)
    if device is not None and str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if module is not None:
        for p in module.parameters():
            return p.device
        for b in module.buffers():
            return b.device
    return torch.device("cpu")


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A torch generator on ``device`` seeded with ``seed`` (a fresh random seed when ``None``)."""
    gen = torch.Generator(device=device)
    if seed is None:
        gen.seed()
    else:
        gen.manual_seed(int(seed))
    return gen


def randn_like(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like ``x`` drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
