"""From a command's config to a :class:`~tsdiff.sampling.DiffusionSampler`: the one place that reads the
``sampler/`` and ``cache/`` groups (and their older alias keys, ``conf/sampling_aliases.yaml``).

* ``sampler.solver``: a solver function built by ``_target_`` + ``_partial_: true`` (with its options), or
  null for the model's default; the alias ``solver=<name>`` (+ ``solver_kwargs``) takes precedence.
* ``sampler.steps``: the number of steps; the tasks read ``num_diffusion_steps``, which defaults to it;
  null (``sampler=auto``) takes the model's ``default_steps`` (:func:`num_steps`).
* ``sampler.guidance``: null or a ``_target_`` building a hook ``guidance(x0_hat, x_t, t, step)``.
* ``sampler.stage_steps`` (optional): steps per stage of a cascaded model (one that declares
  ``cascade_stages()``, :class:`~tsdiff.sampling.contract.Cascades`), which gets a
  :class:`~tsdiff.sampling.cascade.CascadeSampler` with the same options for every stage.
* ``cache``: a cache policy built by ``_target_`` (``none``, ``e2crf``, ``e2crf_token``, ``e2crf_step``,
  the ablation variants); the aliases ``use_cache`` and ``cache_kwargs.*`` switch and adjust it.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

NO_CACHE = "tsdiff.caching.NoCache"
DEFAULT_STEPS = 100  # sampler=auto for a model that declares no default_steps
E2CRF = "tsdiff.caching.E2CRFCache"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def cache_config(cfg: DictConfig) -> dict[str, Any]:
    """The cache policy's config (``_target_`` and options) with the ``use_cache`` / ``cache_kwargs``
    aliases applied; ``{"_target_": NoCache}`` when the command has no cache."""
    node = dict(_plain(cfg.get("cache")) or {"_target_": NO_CACHE})
    use = cfg.get("use_cache")
    kwargs = {k: v for k, v in (_plain(cfg.get("cache_kwargs")) or {}).items() if v is not None}
    if use is not None and not isinstance(use, bool):
        raise ValueError(f"use_cache must be true or false, got {use!r} (or choose cache=e2crf / cache=none)")
    if use is False:
        node = {"_target_": NO_CACHE}
    elif use is True and node.get("_target_") == NO_CACHE:
        node = {"_target_": E2CRF}  # the policy's own defaults, as use_cache=true always meant
    if kwargs:
        if node.get("_target_") == NO_CACHE:
            raise ValueError("cache_kwargs were given but use_cache is False; set use_cache=true (or cache=e2crf) to use them")
        node.update(kwargs)
    return node


def build_cache(node: dict[str, Any]):
    """A fresh cache policy from a :func:`cache_config` node (with any extra options already merged).

    The ``_target_`` class is called directly (not through ``hydra.utils.instantiate``) so that a bad
    option surfaces as the policy's own one-line error rather than wrapped in an instantiation trace."""
    from hydra.utils import get_class

    options = {k: v for k, v in node.items() if not k.startswith("_")}
    return get_class(node["_target_"])(**options)


def cache_options(node: dict[str, Any] | None) -> dict[str, Any] | None:
    """A cache node's options without Hydra keys (what results files report), None for no cache."""
    if node is None or node.get("_target_") == NO_CACHE:
        return None
    return {k: v for k, v in node.items() if not k.startswith("_")}


def solver_of(cfg: DictConfig) -> Any:
    """The configured solver: the alias ``solver=<name>`` if set, else ``sampler.solver`` (a partial), else
    ``"auto"`` (the model's default)."""
    from hydra.utils import instantiate

    name = cfg.get("solver")
    if name is not None and name != "auto":
        return name
    sampler = cfg.get("sampler") or {}
    node = sampler.get("solver") if sampler else None
    return instantiate(node) if node is not None else "auto"


def guidance_of(cfg: DictConfig) -> Any:
    from hydra.utils import instantiate

    sampler = cfg.get("sampler") or {}
    node = sampler.get("guidance") if sampler else None
    return instantiate(node) if node is not None else None


def apply_model_settings(cfg: DictConfig, model: Any) -> None:
    """Set the loaded model's sampling-time settings from ``cfg.model_settings`` (e.g. L2D-Diff's
    ``+model_settings.guidance_scale=1``). A model lists what may change after training in
    ``sampling_settings``; anything else is refused, since it would not match the trained weights."""
    settings = _plain(cfg.get("model_settings")) or {}
    allowed = tuple(getattr(model, "sampling_settings", ()))
    for key, value in settings.items():
        if key not in allowed:
            raise ValueError(
                f"model_settings.{key}: {type(model).__name__} has no sampling-time setting '{key}' "
                f"(it has: {', '.join(allowed) or 'none'}); training settings change only with a new run")
        setattr(model, key, value)


def num_steps(cfg: DictConfig, model: Any = None) -> int:
    """Steps per sample: ``num_diffusion_steps`` (which defaults to ``sampler.steps``); when neither is set
    (``sampler=auto``), the model's ``default_steps``, else 100."""
    steps = cfg.get("num_diffusion_steps")
    if steps is None and cfg.get("sampler") is not None:
        steps = cfg.sampler.get("steps")
    if steps is None:
        from tsdiff.sampling.contract import preferred_steps

        steps = (preferred_steps(model) if model is not None else None) or DEFAULT_STEPS
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"num_diffusion_steps / sampler.steps must be a positive integer, got {steps!r} (e.g. sampler.steps=100)")
    return steps


def build_sampler(cfg: DictConfig, model: Any, device: Any, *, batch_size: int | None = None, cache: Any = "config",
                  solver: Any = None, solver_kwargs: dict[str, Any] | None = None, progress: bool | None = None):
    """The DiffusionSampler a command's ``cfg`` describes, for ``model`` on ``device``.

    ``batch_size`` defaults to ``cfg.sample_batch_size``; ``cache`` to the configured policy (pass a cache
    node from :func:`cache_config`, or None for no cache); ``solver`` to :func:`solver_of` (with the alias's
    ``solver_kwargs``); ``progress`` to ``cfg.progress`` (False when absent).
    """
    from tsdiff.sampling import DiffusionSampler
    from tsdiff.sampling.cascade import CascadeSampler
    from tsdiff.sampling.contract import Cascades, declares

    apply_model_settings(cfg, model)
    node = cache_config(cfg) if isinstance(cache, str) and cache == "config" else cache
    policy = build_cache(node if node is not None else {"_target_": NO_CACHE})
    if solver is None:
        solver = solver_of(cfg)
        if solver_kwargs is None and cfg.get("solver_kwargs"):
            solver_kwargs = _plain(cfg.solver_kwargs)
    options = dict(
        solver=solver,
        solver_kwargs=solver_kwargs or None,
        sample_batch_size=int(batch_size if batch_size is not None else cfg.sample_batch_size),
        cache=policy,
        guidance=guidance_of(cfg),
        num_diffusion_steps=num_steps(cfg, model),
        device=device,
        progress=bool(cfg.get("progress", False)) if progress is None else progress,
    )
    if declares(model, Cascades):
        stage_steps = (cfg.get("sampler") or {}).get("stage_steps")
        return CascadeSampler(model.cascade_stages(), stage_steps=_plain(stage_steps), **options)
    return DiffusionSampler(model, **options)
