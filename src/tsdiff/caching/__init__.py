"""Cache policies for the DiffusionSampler (see :mod:`tsdiff.caching.base`).

Policies are built from ``conf/cache/*.yaml`` by Hydra ``_target_`` (``cache=none|e2crf|e2crf_token|...``);
:func:`make_cache_policy` keeps the older ``use_cache`` / ``cache_kwargs`` spelling working.
"""

from tsdiff.caching.base import CachePolicy, CacheStats, NoCache
from tsdiff.caching.e2crf import E2CRFCache
from tsdiff.caching.interface import CacheInterface, TokenLayer, TokenNetwork
from tsdiff.caching.step_path import StepE2CRF
from tsdiff.caching.token_path import TokenE2CRF

__all__ = [
    "CacheInterface", "CachePolicy", "CacheStats", "E2CRFCache", "NoCache", "StepE2CRF", "TokenE2CRF", "TokenLayer",
    "TokenNetwork", "make_cache_policy",
]


def make_cache_policy(use_cache: bool = False, cache_kwargs: dict | None = None) -> CachePolicy:
    """The policy behind ``DiffusionSampler(use_cache=..., cache_kwargs=...)`` (the older spelling of
    ``cache=NoCache()`` / ``cache=E2CRFCache(**cache_kwargs)``); ``None`` values mean "the default"."""
    cache_kwargs = {k: v for k, v in (cache_kwargs or {}).items() if v is not None}
    if not use_cache:
        if cache_kwargs:
            raise ValueError("cache_kwargs were given but use_cache is False; set use_cache=True (or cache=e2crf) to use them")
        return NoCache()
    return E2CRFCache(**cache_kwargs)
