"""Noise schedules, parameterization conversions and the Fourier representation."""

from tsdiff.diffusion.parameterization import PARAMETERIZATIONS, from_x0, to_x0
from tsdiff.diffusion.schedules import (
    VESDE,
    VPSDE,
    CosineSchedule,
    DiscreteSchedule,
    LinearSchedule,
    NoiseSchedule,
)

__all__ = [
    "PARAMETERIZATIONS",
    "from_x0",
    "to_x0",
    "NoiseSchedule",
    "DiscreteSchedule",
    "LinearSchedule",
    "CosineSchedule",
    "VPSDE",
    "VESDE",
]
