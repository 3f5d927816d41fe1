"""Generation metrics: properties that pin each one down, on tiny shapes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from tsdiff import metrics as M
from tsdiff.metrics._checks import torch_threads
from tsdiff.metrics.posthoc import BlockGRU


@pytest.fixture(autouse=True)
def _one_thread():
    """The metric networks are tiny; on a busy shared CPU two intra-op threads make every op wait for a
    time slice (measured ~50x slower), so this module trains them on one thread (restored afterwards)."""
    with torch_threads(1):
        yield


def sines(n, length=16, channels=2, shift=0.0, freq=1.0, noise=0.0, seed=0):
    """Sines with random phase in [0.1, 0.9] (+ shift); the toy data set of TimeGAN/Diffusion-TS."""
    g = np.random.default_rng(seed)
    t = np.linspace(0, 2 * np.pi, length)[None, :, None]
    phase = g.uniform(0, 2 * np.pi, (n, 1, channels))
    x = 0.5 + 0.4 * np.sin(freq * t + phase) + shift
    return x + noise * g.standard_normal(x.shape)


# ----------------------------------------------------------------------------- input checks
@pytest.mark.parametrize(
    "real, fake, message",
    [
        (np.zeros((4, 8)), np.zeros((4, 8, 1)), "shape \\(N, length, channels\\)"),
        (np.full((4, 8, 1), np.nan), np.zeros((4, 8, 1)), "NaN"),
        (np.zeros((4, 8, 2)), np.zeros((4, 8, 3)), "channels=3"),
        (np.zeros((4, 8, 2)), np.zeros((4, 9, 2)), "length=9"),
    ],
)
def test_bad_inputs_raise_clear_errors(real, fake, message):
    with pytest.raises(ValueError, match=message):
        M.sliced_wasserstein(real, fake, num_directions=2)


def test_unknown_metric_and_mode_are_rejected():
    x = sines(8)
    with pytest.raises(ValueError, match="unknown metric"):
        M.evaluate_generation(x, x, metrics=["fid"])
    with pytest.raises(ValueError, match="mode must be"):
        M.evaluate_generation(x, x, metrics=["kl"], mode="quick")


def test_minmax_uses_real_statistics_only():
    real = np.stack([np.linspace(0, 2, 5), np.linspace(-1, 1, 5)], -1)[None].repeat(3, 0)
    fake = real * 2
    r, f = M.minmax_scale_like_diffusion_ts(real, fake)
    assert r.min() == 0 and r.max() == 1
    np.testing.assert_allclose(f[0, -1], [2.0, 1.5])  # fake is mapped with the real range, not clipped


# ----------------------------------------------------------------------------- Wasserstein
def test_wasserstein_1d_matches_brute_force_with_unequal_sizes():
    g = np.random.default_rng(1)
    x, y = g.normal(size=(6, 3)), g.normal(size=(4, 3))
    # Replicating each point turns both into sets of 12 equal-weight atoms; sorted pairing is then optimal.
    xr, yr = np.sort(np.repeat(x, 2, 0), 0), np.sort(np.repeat(y, 3, 0), 0)
    expected = np.sqrt(np.mean((xr - yr) ** 2, axis=0))
    np.testing.assert_allclose(M.wasserstein_1d(x, y), expected, rtol=1e-12)


def test_sliced_wasserstein_matches_reference_definition():
    x, y = sines(30, 6, 2, seed=0), sines(30, 6, 2, shift=0.2, seed=1)
    rng = np.random.default_rng(3)  # the fdiff reference draws one Gaussian direction at a time
    dists = []
    for _ in range(20):
        d = rng.normal(size=12)
        d /= np.linalg.norm(d)
        a, b = np.sort(x.reshape(30, -1) @ d), np.sort(y.reshape(30, -1) @ d)
        dists.append(np.sqrt(np.mean((a - b) ** 2)))
    assert M.sliced_wasserstein(x, y, num_directions=20, seed=3) == pytest.approx(np.mean(dists), rel=1e-10)


def test_wasserstein_distances_zero_on_self_and_monotone_in_shift():
    x = sines(64, seed=0)
    assert M.sliced_wasserstein(x, x, 50) == pytest.approx(0.0, abs=1e-12)
    assert M.marginal_wasserstein(x, x) == pytest.approx(0.0, abs=1e-12)
    sw = [M.sliced_wasserstein(x, sines(64, shift=s, seed=1), 50) for s in (0.0, 0.2, 0.5, 1.0)]
    assert sw == sorted(sw)
    # a constant shift c moves every marginal by exactly c
    assert M.marginal_wasserstein(x, x + 0.3) == pytest.approx(0.3, rel=1e-9)


# ----------------------------------------------------------------------------- Fréchet / Context-FID
def test_frechet_distance_matches_closed_forms():
    assert M.frechet_distance([0.0], [[4.0]], [1.0], [[1.0]]) == pytest.approx(1.0 + (2 - 1) ** 2)
    g = np.random.default_rng(0)
    a, b = g.normal(size=(5, 5)), g.normal(size=(5, 5))
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    mu1, mu2 = g.normal(size=5), g.normal(size=5)
    r = scipy.linalg.sqrtm(s1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * np.real(scipy.linalg.sqrtm(r @ s2 @ r)))
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-8)


@pytest.mark.slow
def test_context_fid_deterministic_and_separates_distributions():
    real = sines(48, 12, 2, seed=0)
    same = sines(48, 12, 2, seed=1)
    kw = dict(iterations=4, batch_size=8)
    a = M.context_fid(real, same, seed=5, **kw)
    assert a == M.context_fid(real, same, seed=5, **kw)
    far = M.context_fid_runs(real, sines(48, 12, 2, shift=0.6, noise=0.2, seed=2), [5], **kw)[0]
    assert a < far


# ----------------------------------------------------------------------------- statistics
def test_correlational_score_zero_on_self_and_grows_with_correlation_gap():
    g = np.random.default_rng(0)
    base = g.normal(size=(200, 10, 1))

    def mix(rho, seed):
        e = np.random.default_rng(seed).normal(size=(200, 10, 1))
        return np.concatenate([base, rho * base + np.sqrt(1 - rho**2) * e], -1)

    real = mix(0.9, 1)
    assert M.correlational_score(real, real) == pytest.approx(0.0, abs=1e-12)
    scores = [M.correlational_score(real, mix(r, 2)) for r in (0.9, 0.5, 0.0, -0.5)]
    assert scores == sorted(scores) and scores[0] < 0.01


def test_kl_and_spectral_zero_on_self_and_monotone():
    x = sines(80, seed=0)
    assert M.kl_divergence(x, x) == pytest.approx(0.0, abs=1e-12)
    assert M.spectral_density_distance(x, x) == pytest.approx(0.0, abs=1e-12)
    kl = [M.kl_divergence(x, sines(80, shift=s, seed=1)) for s in (0.0, 0.1, 0.3)]
    assert kl == sorted(kl)
    sd = [M.spectral_density_distance(x, sines(80, noise=n, seed=1)) for n in (0.0, 0.1, 0.3)]
    assert sd == sorted(sd) and sd[0] < 0.05


# ----------------------------------------------------------------------------- DTW
def _dtw_brute(a, b):
    """Minimum over every monotone warping path, enumerated explicitly."""
    la, lb = len(a), len(b)
    best = math.inf

    def walk(i, j, acc):
        nonlocal best
        acc += np.linalg.norm(a[i] - b[j])
        if i == la - 1 and j == lb - 1:
            best = min(best, acc)
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < la and j + dj < lb:
                walk(i + di, j + dj, acc)

    walk(0, 0, 0.0)
    return best


def test_dtw_matches_brute_force():
    g = np.random.default_rng(0)
    a, b = g.normal(size=(3, 5, 2)), g.normal(size=(3, 4, 2))
    got = M.dtw(torch.as_tensor(a), torch.as_tensor(b)).numpy()
    np.testing.assert_allclose(got, [_dtw_brute(a[i], b[i]) for i in range(3)], rtol=1e-12)


def test_segment_dtw_variants():
    real = sines(40, 24, 2, noise=0.05, seed=0)
    assert M.segment_dtw(real, real, 6, "paired") == pytest.approx(0.0, abs=1e-12)
    assert M.segment_dtw(real, real, 8, "nn") == pytest.approx(0.0, abs=1e-6)
    draw = sines(40, 24, 2, noise=0.05, seed=1)
    collapsed = np.repeat(real[:1], 40, 0)  # a generator that always outputs one real window
    far = sines(40, 24, 2, shift=0.5, noise=0.05, seed=2)
    nn = [M.segment_dtw(real, f, 6, "nn") for f in (draw, collapsed, far)]
    assert nn[0] < nn[1] < nn[2]  # low diversity is not rewarded
    paired = [M.segment_dtw(real, f, 6, "paired") for f in (draw, far)]
    assert paired[0] < paired[1]
    with pytest.raises(ValueError, match="equal size"):
        M.segment_dtw(real, draw[:10], 6, "paired")
    with pytest.raises(ValueError, match="longer than the windows"):
        M.segment_dtw(real, draw, 30, "nn")


# ----------------------------------------------------------------------------- post-hoc GRUs
def test_block_gru_blocks_are_independent():
    x = torch.randn(4, 5, 2, 3)
    gru = BlockGRU(3, 2, seeds=[0, 1])
    out, _ = gru(x)
    out.sum().backward()
    x2 = x.clone()
    x2[:, :, 1] += 10.0  # perturbing run 1's input must leave run 0 untouched
    out2, _ = gru(x2)
    torch.testing.assert_close(out[:, :, 0], out2[:, :, 0])
    w = gru.gru.weight_ih_l0.grad.reshape(3, 4, 6)
    assert torch.all(w[:, :2, 3:] == 0) and torch.all(w[:, 2:, :3] == 0)


def test_predictive_scores_run_independently_and_deterministically():
    real, fake = sines(40, 8, 3, seed=0), sines(40, 8, 3, seed=1)
    kw = dict(iterations=20, batch_size=16)
    alone = M.predictive_scores(real, fake, [7], **kw)
    together = M.predictive_scores(real, fake, [7, 8], **kw)
    assert alone[0] == pytest.approx(together[0], rel=1e-4)
    assert together == M.predictive_scores(real, fake, [7, 8], **kw)


def test_predictive_score_prefers_realistic_training_data():
    def lagged(n, seed):  # the last channel repeats channel 0 one step later, so it is predictable
        x = sines(n, 9, 4, seed=seed)
        x[:, 1:, -1] = x[:, :-1, 0]
        return x

    real = lagged(64, 0)
    kw = dict(seed=0, iterations=200, batch_size=32, lr=1e-2)
    good = M.predictive_score(real, lagged(64, 1), **kw)
    bad = M.predictive_score(real, np.random.default_rng(2).random((64, 9, 4)), **kw)
    assert good < 0.7 * bad


@pytest.mark.slow
def test_discriminative_score_near_zero_for_same_and_large_for_different():
    real = sines(120, 8, 4, noise=0.02, seed=0)
    kw = dict(iterations=150, batch_size=32, lr=1e-2)
    same = M.discriminative_scores(real, sines(120, 8, 4, noise=0.02, seed=1), [0], **kw)[0]["score"]
    diff = M.discriminative_scores(real, sines(120, 8, 4, shift=0.4, noise=0.02, seed=1), [0], **kw)[0]["score"]
    assert same < 0.15 and diff > 0.35
    assert same == M.discriminative_score(real, sines(120, 8, 4, noise=0.02, seed=1), seed=0, **kw)


# ----------------------------------------------------------------------------- suite
def test_summarize_runs_student_t_interval():
    res = M.summarize_runs([1.0, 2.0, 3.0])
    assert res["mean"] == 2.0 and res["std"] == 1.0
    assert res["ci95"] == pytest.approx(4.302652729911275 / math.sqrt(3))


@pytest.mark.slow
def test_evaluate_generation_fast_mode_is_deterministic_and_complete():
    real, fake = sines(32, 12, 2, seed=0), sines(32, 12, 2, shift=0.1, seed=1)
    tiny = {"context_fid": {"iterations": 2}, "discriminative": {"iterations": 3, "batch_size": 8},
            "predictive": {"iterations": 3, "batch_size": 8}, "segment_dtw_nn": {"max_windows": 10},
            "sliced_wasserstein": {"num_directions": 10}}
    a = M.evaluate_generation(real, fake, "all", mode="fast", num_runs=2, seed=3, overrides=tiny)
    expected = {"context_fid", "correlational", "discriminative", "predictive", "kl", "sliced_wasserstein",
                "marginal_wasserstein", "spectral", "segment_dtw_paired@6", "segment_dtw_nn@10"}
    assert expected <= set(a)
    for name, r in a.items():
        assert {"mean", "std", "ci95", "runs", "seconds"} <= set(r), name
        assert len(r["runs"]) == (2 if r["repeated"] else 1)
    b = M.evaluate_generation(real, fake, "all", mode="fast", num_runs=2, seed=3, overrides=tiny)
    assert {k: v["runs"] for k, v in a.items()} == {k: v["runs"] for k, v in b.items()}
