"""The real frequency representation of Crabbé et al. 2024 and its noise-scaling diagonal.

``dft`` maps a real series ``x`` of shape ``(batch, length, channels)`` to a real tensor of the *same*
shape: the orthonormal DFT (``norm="ortho"``) keeps the real parts of components ``0 .. floor(L/2)``
followed by the imaginary parts of components ``1 .. ceil(L/2) - 1``; the imaginary parts of the DC
component (and of the Nyquist component when ``L`` is even) are always zero for real input and are
dropped, and so are the conjugate-symmetric components. ``idft`` inverts it exactly.

White noise in time is not white in this representation: the DC and Nyquist real parts have variance
1, every other real or imaginary part variance 1/2 (paper, Sec. 3, the diagonal that scales the
forward noise). :func:`noise_scale` returns the per-component standard deviation ``S``; then

* ``dft(eps_time)`` has the law of ``S * eps`` with ``eps`` white, and
* ``z = dft(x) / S`` is an *orthogonal* transform of ``x`` (``whiten``).

tsdiff runs the sampler in the whitened coordinates ``z`` (where noise is white, so every solver applies
unchanged) while the network sees the paper's representation ``y = S * z``; the forward process of ``y``
is then exactly the paper's ``y_t = alpha_t y_0 + sigma_t S eps``.
"""

from __future__ import annotations

import math

import torch


def _n_real(length: int) -> int:
    return length // 2 + 1


def dft(x: torch.Tensor) -> torch.Tensor:
    """Real frequency representation along dim 1 of ``(batch, length, channels)``; same shape."""
    length = x.shape[1]
    spec = torch.fft.rfft(x, dim=1, norm="ortho")
    n_imag = length - _n_real(length)
    return torch.cat([spec.real, spec.imag[:, 1 : 1 + n_imag]], dim=1)


def idft(y: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`dft`."""
    length = y.shape[1]
    n_real = _n_real(length)
    n_imag = length - n_real
    real = y[:, :n_real]
    imag = torch.zeros_like(real)
    imag[:, 1 : 1 + n_imag] = y[:, n_real:]
    return torch.fft.irfft(torch.complex(real, imag), n=length, dim=1, norm="ortho")


def noise_scale(length: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """Per-component std ``S`` of ``dft(white noise)``, shape ``(length, 1)`` (broadcasts over channels)."""
    s = torch.full((length, 1), 1.0 / math.sqrt(2.0), device=device, dtype=dtype)
    s[0] = 1.0
    if length % 2 == 0:
        s[length // 2] = 1.0
    return s


def frequency_index(length: int) -> torch.Tensor:
    """Frequency (in cycles per window) of each position of the representation, shape ``(length,)``.

    Real parts come first (0 .. floor(L/2)), then imaginary parts (1 .. ceil(L/2)-1); used to order
    tokens from low to high frequency (e.g. the E2-CRF cache's "K lowest-frequency tokens").
    """
    n_real = _n_real(length)
    return torch.cat([torch.arange(n_real), torch.arange(1, 1 + length - n_real)])


def whiten(x: torch.Tensor) -> torch.Tensor:
    """Orthogonal map time -> whitened frequency coordinates ``dft(x) / S``."""
    return dft(x) / noise_scale(x.shape[1], x.device, x.dtype)


def unwhiten(z: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`whiten` (whitened frequency -> time)."""
    return idft(z * noise_scale(z.shape[1], z.device, z.dtype))
