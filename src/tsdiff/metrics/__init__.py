"""Evaluation metrics for time-series generation and forecasting, as plain functions.

Generation metrics compare a real and a generated set of windows, each ``(N, length, channels)``; see
:func:`evaluate_generation` for the whole suite (paper or fast settings, repeated over seeds). Forecasting
metrics score point forecasts or sample ensembles against targets ``(N, horizon, channels)``.

=======================  ===================================================  =======================
name                      defined by                                           no-difference value
=======================  ===================================================  =======================
context_fid               Jeha et al. 2022 (PSA-GAN) with a TS2Vec encoder     0
correlational             Liao et al. 2020; used by Diffusion-TS               0 (n/a for 1 channel)
discriminative            Yoon et al. 2019 (TimeGAN); balanced, width >= 8     0 (|acc - 0.5|)
predictive                Yoon et al. 2019 (TimeGAN)                           the real data's own MAE
kl                        per-channel marginal-histogram KL (tsdiff)           0
kl_kprotodiff             K-ProtoDiff's KL: channels pooled, 100 bins          0
segment_dtw_paired/_nn    K-ProtoDiff segment-wise DTW (paired / nearest)      > 0 (see :mod:`.dtw`)
sliced_wasserstein        Crabbé et al. 2024 (fdiff)                           0
marginal_wasserstein      Crabbé et al. 2024 (fdiff)                           0
spectral                  mean power spectra, relative L1                      0
=======================  ===================================================  =======================
"""

from ._checks import check_pair, check_set, minmax_scale_like_diffusion_ts
from .dtw import dtw, dtw_from_cost, segment_dtw
from .fid import context_fid, context_fid_many, context_fid_runs, frechet_distance, frechet_distance_from_embeddings
from .forecasting import crps_ensemble, mae, mse
from .posthoc import (
    MIN_DISCRIMINATOR_HIDDEN,
    discriminative_score,
    discriminative_scores,
    discriminative_scores_many,
    predictive_score,
    predictive_scores,
)
from .statistics import correlational_score, kl_divergence, kl_divergence_pooled, mean_power_spectrum, spectral_density_distance
from .suite import DEFAULT_NUM_RUNS, GENERATION_METRICS, MetricSpec, evaluate_generation, resolve_metrics, summarize_runs
from .wasserstein import marginal_wasserstein, sliced_wasserstein, wasserstein_1d

__all__ = [
    "DEFAULT_NUM_RUNS",
    "MIN_DISCRIMINATOR_HIDDEN",
    "GENERATION_METRICS",
    "MetricSpec",
    "check_pair",
    "check_set",
    "context_fid",
    "context_fid_many",
    "context_fid_runs",
    "correlational_score",
    "crps_ensemble",
    "discriminative_score",
    "discriminative_scores",
    "discriminative_scores_many",
    "dtw",
    "dtw_from_cost",
    "evaluate_generation",
    "frechet_distance",
    "frechet_distance_from_embeddings",
    "kl_divergence",
    "kl_divergence_pooled",
    "mae",
    "marginal_wasserstein",
    "mean_power_spectrum",
    "minmax_scale_like_diffusion_ts",
    "mse",
    "predictive_score",
    "predictive_scores",
    "resolve_metrics",
    "segment_dtw",
    "sliced_wasserstein",
    "spectral_density_distance",
    "summarize_runs",
    "wasserstein_1d",
]
