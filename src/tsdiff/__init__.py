"""tsdiff: time-series diffusion models with a shared diffusion core.

Importing :mod:`tsdiff` is cheap on purpose: it loads neither Lightning, wandb nor kaggle. Import the
parts you use, e.g. ``from tsdiff.sampling import DiffusionSampler``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
