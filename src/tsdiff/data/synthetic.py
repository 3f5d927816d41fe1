"""Generated data: seeded sums of sinusoids.

fdiff's ``SyntheticDatamodule`` draws one sinusoid per sample, ``sin(t * f + phi)`` with
``f ~ Beta(2, 2)`` (radians per step) and ``phi ~ N(0, 1)``, using the global numpy RNG. We keep
that family (so the spectra look alike) but make it a *sum* of ``n_components`` sinusoids per
channel with random amplitudes, draw everything from ``numpy.random.default_rng(seed)`` so that the
data is reproducible and independent of global state, and generate it in memory (nothing is written
to ``data_dir``). The frequency content is known exactly, which makes this data set the sanity check
of frequency-domain diffusion.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tsdiff.data.base import TimeSeriesDataModule

__all__ = ["SyntheticDataModule", "make_sinusoids"]


def make_sinusoids(
    n_samples: int, length: int, n_channels: int, n_components: int, noise_std: float, seed: int
) -> np.ndarray:
    """(n_samples, length, n_channels) float32: per sample and channel, a sum of sinusoids.

    x[t] = sum_k a_k sin(f_k t + phi_k) + noise, with f_k ~ Beta(2, 2) * pi (between 0 and the
    Nyquist frequency pi rad/step), phi_k ~ U(0, 2 pi), a_k ~ U(0.5, 1.5) / n_components.
    """
    if min(n_samples, length, n_channels, n_components) < 1:
        raise ValueError(
            f"make_sinusoids: n_samples={n_samples}, length={length}, n_channels={n_channels}, "
            f"n_components={n_components} must all be >= 1"
        )
    if noise_std < 0:
        raise ValueError(f"noise_std={noise_std} must be >= 0")
    rng = np.random.default_rng(seed)
    shape = (n_samples, 1, n_channels, n_components)
    freq = rng.beta(2.0, 2.0, size=shape) * np.pi
    phase = rng.uniform(0.0, 2.0 * np.pi, size=shape)
    amp = rng.uniform(0.5, 1.5, size=shape) / n_components
    t = np.arange(length, dtype=np.float64).reshape(1, length, 1, 1)
    x = (amp * np.sin(freq * t + phase)).sum(axis=-1)
    if noise_std > 0:
        x = x + noise_std * rng.standard_normal(x.shape)
    return x.astype(np.float32)


class SyntheticDataModule(TimeSeriesDataModule):
    """``datamodule=synthetic``: a seeded collection of independent multi-channel sinusoid mixtures.

    Extra args:
        n_samples: number of generated sequences (split at random into train/val/test).
        n_channels: channels per sequence.
        n_components: sinusoids summed per channel.
        noise_std: standard deviation of added white noise.
    """

    dataset_name = "synthetic"
    layout = "collection"
    default_seq_len = 24

    def __init__(
        self,
        data_dir: str = "data/synthetic",
        n_samples: int = 4000,
        n_channels: int = 3,
        n_components: int = 2,
        noise_std: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(data_dir=data_dir, **kwargs)
        self.n_samples = int(n_samples)
        self.n_generated_channels = int(n_channels)
        self.n_components = int(n_components)
        self.noise_std = float(noise_std)
        # Validate now rather than at setup() so a bad config fails at instantiation.
        make_sinusoids(1, 1, self.n_generated_channels, self.n_components, self.noise_std, 0)
        if self.n_samples < 1:
            raise ValueError(f"n_samples={n_samples} must be >= 1")

    def load_collection(self) -> tuple[np.ndarray, None]:
        x = make_sinusoids(
            self.n_samples, self._seq_len, self.n_generated_channels, self.n_components, self.noise_std, self.seed
        )
        self.channel_names = [f"ch{i}" for i in range(self.n_generated_channels)]
        return x, None
