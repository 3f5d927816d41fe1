"""Cache policies for the DiffusionSampler (see :mod:`tsdiff.caching.base`)."""

from tsdiff.caching.base import CachePolicy, CacheStats, NoCache

__all__ = ["CachePolicy", "CacheStats", "NoCache", "make_cache_policy"]


def make_cache_policy(use_cache: bool = False, cache_kwargs: dict | None = None) -> CachePolicy:
    """The policy behind ``DiffusionSampler(use_cache=..., cache_kwargs=...)``.

    ``use_cache=False`` gives :class:`NoCache`. ``use_cache=True`` gives the E2-CRF cache configured by
    ``cache_kwargs`` (``K``, ``tau_0``, ``R``, ``tau_warn``, ``random_probe_ratio``, ...).
    """
    # unset keys (None, as listed in conf/sample.yaml) mean "the policy's default"
    cache_kwargs = {k: v for k, v in (cache_kwargs or {}).items() if v is not None}
    if not use_cache:
        if cache_kwargs:
            raise ValueError("cache_kwargs were given but use_cache is False; set use_cache=True to use them")
        return NoCache()
    try:
        from tsdiff.caching.e2crf import E2CRFCache
    except ImportError as err:  # pragma: no cover - until the E2-CRF module lands
        raise NotImplementedError("E2-CRF caching is not available in this build of tsdiff") from err
    return E2CRFCache(**(cache_kwargs or {}))
