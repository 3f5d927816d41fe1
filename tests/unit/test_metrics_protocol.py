"""Metric fixes of issue 11: balanced, learnable discriminative score; correlational n/a for one channel;
K-ProtoDiff's pooled KL; Context-FID on fake[:N_real] and shared encoders across candidate sets."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from tsdiff import metrics as M
from tsdiff.metrics._checks import torch_threads


@pytest.fixture(autouse=True)
def _one_thread():
    with torch_threads(1):
        yield


def sines(n, length=12, channels=1, shift=0.0, noise=0.02, seed=0):
    g = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, length)[None, :, None]
    x = 0.5 + 0.4 * np.sin(t + g.uniform(0, 2 * np.pi, (n, 1, channels))) + shift
    return x + noise * g.standard_normal(x.shape)


DS_FAST = dict(iterations=200, batch_size=32, lr=1e-2)


# ----------------------------------------------------------------------------- discriminative score
@pytest.mark.slow
@pytest.mark.parametrize("channels", [1, 3])
def test_discriminative_real_vs_real_near_zero_and_real_vs_noise_near_half_with_unequal_sizes(channels):
    real = sines(150, channels=channels, seed=0)  # 150 real windows vs 50 generated: classes must be balanced
    same = sines(50, channels=channels, seed=1)
    noise = np.random.default_rng(2).random((50, 12, channels))
    res_same, res_noise = M.discriminative_scores_many(real, [same, noise], [0, 1, 2], **DS_FAST)
    assert np.mean([r["score"] for r in res_same]) < 0.15
    assert np.mean([r["score"] for r in res_noise]) > 0.35
    for r in res_same + res_noise:
        assert r["n_per_class"] == 50  # the larger set was subsampled to the smaller one
        assert r["accuracy"] == pytest.approx((r["accuracy_real"] + r["accuracy_fake"]) / 2)
    # the classifier really separates (both classes right), not "always answer fake"
    assert min(min(r["accuracy_real"], r["accuracy_fake"]) for r in res_noise) >= 0.7


@pytest.mark.slow
def test_discriminative_identical_distribution_is_not_penalised_for_set_size():
    # TimeGAN's unbalanced test set: a classifier answering "real" always scored |120/150 - 0.5| = 0.3 here
    real = sines(600, seed=0)
    res = M.discriminative_scores(real, sines(30, seed=1), [0, 1], **DS_FAST)
    assert all(r["n_per_class"] == 30 for r in res)
    assert np.mean([r["score"] for r in res]) < 0.2


@pytest.mark.slow
def test_discriminative_width_floor_lets_one_channel_learn():
    real, noise = sines(80, seed=0), np.random.default_rng(2).random((80, 12, 1))
    floor = M.discriminative_scores(real, noise, [0, 1], **DS_FAST)
    timegan = M.discriminative_scores(real, noise, [0, 1], hidden=1, **DS_FAST)  # TimeGAN's channels // 2 = 0 -> 1
    assert np.mean([r["score"] for r in floor]) > 0.35
    assert np.mean([r["score"] for r in floor]) > np.mean([r["score"] for r in timegan]) + 0.1


@pytest.mark.parametrize("channels", [1, 28])  # 28 channels: width 14, the 6 blocks train in 2 passes
def test_discriminative_many_equals_one_set_at_a_time(channels):
    real, a, b = (sines(60, 6, channels, seed=0), sines(40, 6, channels, seed=1),
                  sines(40, 6, channels, shift=0.3, seed=2))
    kw = dict(iterations=5, batch_size=8)
    both = M.discriminative_scores_many(real, [a, b], [3, 4, 5], **kw)
    alone = M.discriminative_scores(real, b, [3, 4, 5], **kw)
    assert [r["accuracy"] for r in both[1]] == pytest.approx([r["accuracy"] for r in alone], abs=1e-9)
    with pytest.raises(ValueError, match="too few"):
        M.discriminative_scores(real, sines(2, 6, channels, seed=3), [0], train_fraction=0.4)


# ----------------------------------------------------------------------------- correlational, KL
def test_correlational_is_not_applicable_for_one_channel():
    x = sines(20, channels=1)
    assert np.isnan(M.correlational_score(x, x + 0.1))
    res = M.evaluate_generation(x, x + 0.1, ["correlational", "kl"], mode="fast", num_runs=2)
    assert res["correlational"]["mean"] is None and res["correlational"]["applicable"] is False
    assert res["kl"]["mean"] is not None
    from tsdiff.tasks.evaluate import format_table

    line = [ln for ln in format_table(res).splitlines() if ln.startswith("correlational")][0]
    assert "n/a" in line
    assert M.correlational_score(sines(20, channels=2), sines(20, channels=2, seed=1)) >= 0  # 2 channels: a number


def _kprotodiff_reference(real, fake, bins=100):
    """K-ProtoDiff's definition written out: pooled values, density histograms on the real range, +1e-8."""
    p, edges = np.histogram(real.ravel(), bins=bins, density=True)
    q, _ = np.histogram(fake.ravel(), bins=edges, density=True)
    return stats.entropy(p + 1e-8, q + 1e-8)


def test_kl_kprotodiff_matches_its_definition_and_differs_from_per_channel():
    g = np.random.default_rng(0)
    real = np.concatenate([g.normal(0, 1, (50, 8, 1)), g.normal(3, 0.5, (50, 8, 1))], -1)
    fake = np.concatenate([g.normal(0.2, 1, (40, 8, 1)), g.normal(3, 0.7, (40, 8, 1))], -1)
    assert M.kl_divergence_pooled(real, fake) == pytest.approx(_kprotodiff_reference(real, fake), rel=1e-10)
    assert M.kl_divergence_pooled(real, real) == pytest.approx(0.0, abs=1e-12)
    swapped = real[..., ::-1]  # channels exchanged: the pooled histogram cannot see it, the per-channel KL does
    assert M.kl_divergence_pooled(real, swapped) == pytest.approx(0.0, abs=1e-12)
    assert M.kl_divergence(real, swapped) > 1.0
    # generated values outside the real range fall out of K-ProtoDiff's histogram
    wild = real.copy()
    wild[:5] = 100.0
    assert M.kl_divergence_pooled(real, wild) == pytest.approx(_kprotodiff_reference(real, wild), rel=1e-10)
    res = M.evaluate_generation(real, fake, ["kl_kprotodiff"], scale="none")
    assert res["kl_kprotodiff"]["mean"] == pytest.approx(M.kl_divergence_pooled(real, fake))


# ----------------------------------------------------------------------------- Context-FID protocol
@pytest.mark.slow
def test_context_fid_uses_fake_cut_to_n_real_and_shares_the_encoder():
    real = sines(16, 8, 2, seed=0)
    good = sines(16, 8, 2, seed=1)
    longer = np.concatenate([good, np.random.default_rng(3).random((30, 8, 2)) * 5])  # extra windows ignored
    kw = dict(iterations=2, batch_size=4)
    base = M.context_fid_runs(real, good, [0], **kw)
    assert M.context_fid_runs(real, longer, [0], **kw) == pytest.approx(base, rel=1e-9)
    many = M.context_fid_many(real, [good, longer[16:32]], [0], **kw)
    assert many[0] == pytest.approx(base, rel=1e-9)
    assert many[1][0] > base[0]


# ----------------------------------------------------------------------------- comparison vs training windows
def test_compare_to_training_scores_every_set_and_states_the_verdict():
    from tsdiff.metrics.protocol import beats, compare_to_training, format_comparison, verdict_lines

    real = sines(40, 8, 2, seed=0)
    cands = {"model": sines(12, 8, 2, shift=0.5, seed=1), "gaussian": sines(12, 8, 2, seed=2)}
    res = compare_to_training(real, cands, num_runs=2, context_fid_iterations=1, discriminative_iterations=2)
    assert set(res["sets"]) == {"model", "gaussian"} and res["settings"]["n_real"] == 40
    for vals in res["sets"].values():
        assert vals["n"] == 12 and len(vals["context_fid"]["runs"]) == 2 and len(vals["discriminative"]["runs"]) == 2
    assert res["seconds"]["total"] == pytest.approx(res["seconds"]["context_fid"] + res["seconds"]["discriminative"])
    # the shifted "model" is far from the real windows: the verdict must say it does not beat the baseline
    v = beats(res)
    assert v["context_fid"]["beats"] is False
    lines = verdict_lines(res)
    assert lines[0].startswith("model does NOT beat the gaussian on context_fid")
    table = format_comparison(res, {"gaussian": "<- bar"})
    assert "context_fid" in table and "<- bar" in table and "±" in table
    with pytest.raises(ValueError, match="at least one"):
        compare_to_training(real, {})
