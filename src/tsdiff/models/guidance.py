"""Classifier-free guidance weight shared by the models that offer it (L2D-Diff's latent code, K-ProtoDiff's
prototype code).

A model mixes in :class:`GuidanceScale` and combines its conditional and null-condition predictions as
``(1 + w) cond - w null`` when ``guidance_scale`` ``w`` is above 0. The weight changes nothing in the trained
weights, so it is a sampling-time setting: ``cmd/sample.py +model_settings.guidance_scale=w``.
"""

from __future__ import annotations

__all__ = ["GuidanceScale"]


class GuidanceScale:
    """Mixin: ``guidance_scale`` ``w >= 0`` (0: no guidance), listed in ``sampling_settings``."""

    sampling_settings = ("guidance_scale",)
    _guidance_scale = 0.0

    @property
    def guidance_scale(self) -> float:
        """Classifier-free guidance weight ``w >= 0`` (0: none); settable after training."""
        return self._guidance_scale

    @guidance_scale.setter
    def guidance_scale(self, value: float) -> None:
        try:
            w = float(value)
        except (TypeError, ValueError):
            w = float("nan")
        if not w >= 0.0:
            raise ValueError(f"{type(self).__name__} guidance_scale must be >= 0 (0 = no classifier-free guidance), "
                             f"got {value}")
        self._guidance_scale = w

    def guided(self, cond_out, null_out):
        """``(1 + w) cond_out - w null_out``: the guided prediction from the conditional and null ones."""
        w = self._guidance_scale
        return (1 + w) * cond_out - w * null_out
