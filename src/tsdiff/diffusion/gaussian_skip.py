"""The exact denoiser of a multivariate Gaussian fitted to the training windows, used as the skip
connection of a preconditioned denoiser (``ScoreModule(skip="gaussian")``).

Why
    EDM preconditioning (Karras et al. 2022) writes ``x0_hat = c_skip x~ + c_out F``; with a per-component
    ``c_skip = d^2 / (s^2 + d^2)`` the skip term *is* the posterior mean ``E[x0 | x~]`` of a Gaussian with a
    diagonal covariance ``diag(d^2)``. A network output ``F = 0`` therefore samples independent components,
    and every correlation between positions and channels has to be learned. On 28-channel energy windows a
    multivariate Gaussian fitted to the training windows is a hard floor (Context-FID ~0.12), which the
    diagonal-skip model only ties after 10-20k steps.

    Here the skip is the posterior mean of the full-covariance Gaussian ``N(m, Sigma)`` fitted to the
    training windows (in the diffusion variable). With ``Sigma = U diag(lam) U^T`` and noise level
    ``s = sigma / alpha``::

        E[x0 | x~] = m + U diag(lam / (lam + s^2)) U^T (x~ - m)
        Cov[x0 | x~] = U diag(lam s^2 / (lam + s^2)) U^T

    and ``c_out`` is the per-component posterior std ``sqrt(diag(Cov[x0 | x~]))``, so the network's target
    ``(x0 - E[x0 | x~]) / c_out`` has unit variance under the Gaussian, as EDM asks. With ``F = 0`` the
    sampler draws exactly from the fitted Gaussian (up to discretisation); training only has to learn what
    the data has *beyond* its first two moments. The network input keeps EDM's per-component ``c_in``, so
    tokens still mean positions (or frequency components) and the E2-CRF token path is unaffected.

    Not from a paper's recipe: the closed-form Gaussian denoiser is classical (Wiener filter); its use as
    the linear part of a learned denoiser follows the observation that trained diffusion models are close
    to it at high noise (Wang & Vastola 2023, "The hidden linear structure in score-based models").

Cost: two ``(D, D)`` products per evaluation with ``D = length x channels`` (672 on energy: negligible next
to the transformer) and a ``D x D`` buffer saved in the checkpoint. ``D`` above :data:`MAX_DIM` is refused
with the fix (``skip=diagonal``). Eigenvalues are floored like ``data_std`` (relative to the data's scale),
so rank-deficient covariances (zero padding, constant channels, fewer windows than dimensions) stay finite.
"""

from __future__ import annotations

import torch
from torch import nn

MAX_DIM = 4096


class GaussianSkip(nn.Module):
    """Posterior mean and std of ``N(m, U diag(lam) U^T)`` under additive Gaussian noise, per sample.

    Buffers (saved in the checkpoint): ``basis`` ``(D, D)`` (columns are eigenvectors), ``eigvals`` ``(D,)``.
    Tensors passed in are centred data ``x~ - m`` of shape ``(B, L, C)``; ``s2`` is ``(B,)``.
    """

    def __init__(self, length: int, channels: int):
        super().__init__()
        dim = length * channels
        if dim > MAX_DIM:
            raise ValueError(
                f"skip='gaussian' needs a {dim} x {dim} covariance (length {length} x {channels} channels), "
                f"above the limit of {MAX_DIM}; use score_model.skip=diagonal for windows this large"
            )
        self.register_buffer("basis", torch.eye(dim))
        self.register_buffer("eigvals", torch.ones(dim))

    @torch.no_grad()
    def fit(self, z: torch.Tensor, floor: float) -> None:
        """Fit on training windows ``z`` ``(N, L, C)`` in the diffusion variable (any float dtype).

        ``floor``: a std; eigenvalues are clamped at ``floor^2``."""
        flat = z.reshape(len(z), -1).double()
        if flat.shape[1] != self.eigvals.numel():
            raise ValueError(f"GaussianSkip fitted for dimension {self.eigvals.numel()}, got windows of dimension {flat.shape[1]}")
        centred = flat - flat.mean(dim=0)
        cov = centred.T @ centred / max(len(flat) - 1, 1)
        lam, basis = torch.linalg.eigh(cov)
        self.eigvals.copy_(lam.clamp_min(floor**2).float())
        self.basis.copy_(basis.float())

    def _gains(self, s2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lam = self.eigvals.to(s2.dtype)
        denom = lam + s2[:, None]
        return lam / denom, lam * s2[:, None] / denom

    def posterior_mean(self, centred: torch.Tensor, s2: torch.Tensor) -> torch.Tensor:
        """``E[x0 | x~] - m``, shaped like ``centred`` (the std is :meth:`posterior_std`, computed once per call
        of the denoiser's preconditioning, not here)."""
        basis = self.basis.to(centred.dtype)
        gain, _ = self._gains(s2.to(centred.dtype))
        coeff = centred.reshape(len(centred), -1) @ basis
        return ((gain * coeff) @ basis.T).reshape(centred.shape)

    def posterior_std(self, s2: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        """``std[x0 | x~]`` per component, shape ``(B, *shape)``."""
        _, var = self._gains(s2.to(self.basis.dtype))
        return ((self.basis**2) @ var.T).T.clamp_min(0).sqrt().reshape(len(s2), *shape)
