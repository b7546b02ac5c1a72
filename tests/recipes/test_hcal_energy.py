"""hcal-energy recipe: channel map, readout physics, ROOT layout, MAHI-lite and M0, prepare."""

from __future__ import annotations

import numpy as np
import pytest
import uproot
from scipy.optimize import nnls

from detlearn.config import deep_merge, validate_config
from detlearn.errors import DetlearnError
from detlearn.io.dataset import Dataset
from detlearn.prepare import prepare
from detlearn.recipes import get_recipe
from detlearn.recipes.hcal_energy import (
    BRANCHES,
    MAX_DEPTH,
    HcalSimConfig,
    batched_nnls,
    config_from_options,
    generate_channels,
    m0,
    mahi_lite,
    pulse_fractions,
    qie_quantize,
    simulate,
    template_fractions,
    time_slew,
)

NO_PU = {"pu_mean_max": 0.0}
HIGH_E = {**NO_PU, "soft_fraction": 0.0, "energy_min": 50.0, "energy_max": 100.0}


def _gen(n, seed=0, threads=1, **options):
    return generate_channels(n, HcalSimConfig(**options), np.random.default_rng(seed), threads)


def test_channel_map_follows_hb_he_segmentation():
    ch = _gen(60_000)
    a = np.abs(ch.ieta)
    assert set(np.unique(ch.ieta)) == set(range(-29, 0)) | set(range(1, 30))
    assert ch.iphi.min() >= 1 and ch.iphi.max() <= 72
    assert np.all(ch.iphi[a >= 21] % 2 == 1)
    assert np.any(ch.iphi[a <= 20] % 2 == 0)
    for ieta in range(1, 30):
        assert set(np.unique(ch.depth[a == ieta])) == set(range(1, MAX_DEPTH[ieta] + 1)), ieta
    assert MAX_DEPTH[15] == 4 and MAX_DEPTH[16] == 4 and MAX_DEPTH[20] == 7 and MAX_DEPTH[29] == 3


def test_generation_depends_on_the_seed_only_not_on_threads():
    one, two = _gen(70_000, seed=5, threads=1), _gen(70_000, seed=5, threads=2)
    for name, value in one.branches().items():
        np.testing.assert_array_equal(value, two.branches()[name], err_msg=name)
    assert not np.array_equal(one.raw, _gen(70_000, seed=6).raw)


def test_true_energy_spectrum_is_a_soft_exponential_plus_log_uniform_and_pu_spans_0_to_110():
    """genE ~ 0.3 Exp(2 GeV) + 0.7 LogUniform(0.2, 200 GeV); PU ~ Poisson(μ), μ ~ U(0, 100)."""
    from scipy.stats import kstest

    cfg = HcalSimConfig()
    ch = _gen(100_000)
    f = cfg.soft_fraction
    span = np.log(cfg.energy_max / cfg.energy_min)

    def cdf(x):
        log_uniform = np.clip(np.log(np.maximum(x, 1e-300) / cfg.energy_min) / span, 0, 1)
        return f * -np.expm1(-x / cfg.soft_mean) + (1 - f) * log_uniform

    assert kstest(ch.gen_energy, cdf).pvalue > 1e-3
    assert ch.gen_energy.max() > 100 and (ch.gen_energy < 0.2).mean() > 0.02
    pu = ch.pu.astype(np.float64)
    mean, var = cfg.pu_mean_max / 2, cfg.pu_mean_max / 2 + cfg.pu_mean_max**2 / 12
    assert abs(pu.mean() - mean) < 5 * np.sqrt(var / len(pu))
    # The variance's relative error is sqrt((kurtosis - 1) / n), kurtosis < 3 here.
    assert abs(pu.var() / var - 1) < 5 * np.sqrt(2 / len(pu))
    assert pu.min() == 0 and 105 < np.quantile(pu, 0.995) < 125


def test_pileup_is_compound_poisson_uniform_over_the_crossings():
    cfg = HcalSimConfig(pu_mean_min=60.0, pu_mean_max=60.0)
    ch = _gen(100_000, seed=4, pu_mean_min=60.0, pu_mean_max=60.0)
    occupancy = cfg.pu_occupancy * (1 + cfg.pu_occupancy_ieta * np.abs(ch.ieta))
    occupancy = occupancy * np.where(ch.depth == 1, cfg.pu_depth1_factor, 1.0)
    rate = (ch.pu * occupancy)[:, None] * np.ones(cfg.pu_bx_max - cfg.pu_bx_min + 1)
    energy, m = ch.pileup_energy.astype(np.float64), cfg.pu_energy_mean
    # Per (channel, BX): Poisson(rate) deposits of Exp(m): mean rate m, variance 2 rate m²,
    # and the squared deviation has variance 24 rate m⁴ + 8 rate² m⁴ (the cumulants r! rate m^r).
    deviation = energy - rate * m
    for axis_sum in (deviation.sum(), *deviation.sum(axis=0)):
        cells = rate.size if np.ndim(axis_sum) == 0 else len(rate)
        sd = np.sqrt(2 * m**2 * rate.sum() * cells / rate.size)
        assert abs(axis_sum) < 5 * sd
    excess = (deviation**2 - 2 * rate * m**2).sum()
    assert abs(excess) < 5 * np.sqrt(((24 * rate + 8 * rate**2) * m**4).sum())


def test_pedestal_mean_and_width_match_the_readout_constants():
    cfg = HcalSimConfig(**NO_PU)
    ch = _gen(40_000, **NO_PU)
    # Four capacitor pedestals per channel, repeated over the 8 TS.
    np.testing.assert_array_equal(ch.ped[:, :4], ch.ped[:, 4:])
    caps = ch.ped[:, :4].ravel().astype(np.float64)
    assert abs(caps.mean() - cfg.pedestal) < 4 * cfg.pedestal_spread / np.sqrt(caps.size)
    assert caps.std() == pytest.approx(cfg.pedestal_spread, rel=0.02)
    # TS 0 and 1 precede every signal pulse: electronic noise and ADC quantization only.
    empty = (ch.raw[:, :2] - ch.ped[:, :2]).ravel().astype(np.float64)
    width = np.hypot(cfg.pedestal_width, cfg.qie_lsb / np.sqrt(12))
    assert abs(empty.mean()) < 4 * width / np.sqrt(empty.size) + 0.02
    assert empty.std() == pytest.approx(width, rel=0.03)
    np.testing.assert_allclose(ch.noise_adc[:, :2], cfg.qie_lsb / np.sqrt(12), rtol=1e-6)
    assert np.all(ch.noise_photo[:, :2][ch.raw[:, :2] - ch.ped[:, :2] <= cfg.pedestal_width] == 0)


def test_mean_charge_is_gen_energy_over_gain():
    options = {**HIGH_E, "energy_min": 5.0, "calibration_error": 0.0}
    cfg = HcalSimConfig(**options)
    ch = _gen(20_000, **options)
    np.testing.assert_allclose(ch.gain, ch.true_gain, rtol=1e-6)
    total = (ch.raw - ch.ped).astype(np.float64).sum(axis=1)
    in_frame = pulse_fractions(ch.time_shift, cfg).sum(axis=1)
    ratio = total * ch.gain / (ch.gen_energy * in_frame)
    assert abs(ratio.mean() - 1) < 4 * ratio.std() / np.sqrt(len(ratio)) + 1e-3


def test_photostatistics_with_crosstalk_have_the_borel_variance():
    options = {
        **NO_PU,
        "soft_fraction": 0.0,
        "energy_min": 10.0,
        "energy_max": 10.000001,
        "light_spread": 0.0,
        "sipm_gain_spread": 0.0,
        "aging_max": 0.0,
    }
    cfg = HcalSimConfig(**options)
    q = _gen(40_000, **options).signal_charge
    lam = cfg.crosstalk
    primary = 10.0 * cfg.pe_per_gev * (1 - lam)
    assert q.mean() == pytest.approx(10.0 / cfg.nominal_gain, rel=2e-3)
    expected = cfg.fc_per_pe * np.sqrt(primary / (1 - lam) ** 3)
    assert q.std() == pytest.approx(expected, rel=0.03)


def test_signal_peaks_in_the_soi_and_leaks_into_the_next_sample():
    ch = _gen(10_000, **HIGH_E)
    pulse = (ch.raw - ch.ped).astype(np.float64)
    assert np.all(np.argmax(pulse, axis=1) == 3)
    leak = pulse[:, 4] / pulse[:, 3]
    assert 0.18 < leak.mean() < 0.30
    assert np.all(pulse[:, 5] < pulse[:, 4])
    assert np.mean(pulse[:, 2] / pulse[:, 3]) < 0.02


def test_time_slew_delays_small_pulses_only():
    cfg = HcalSimConfig()
    assert time_slew(np.array([1e5]), cfg)[0] == 0.0
    assert time_slew(np.array([1.0]), cfg)[0] == cfg.slew_max
    late = pulse_fractions(cfg.slew_max, cfg)
    assert late[4] > pulse_fractions(0.0, cfg)[4]


def test_float32_pulse_and_slew_agree_with_float64():
    # The simulator evaluates both in float32.
    cfg = HcalSimConfig()
    charge = np.geomspace(0.5, 4e5, 3000)
    slew = time_slew(charge.astype(np.float32), cfg)
    assert slew.dtype == np.float32
    np.testing.assert_allclose(slew, time_slew(charge, cfg), atol=1e-5)
    shift = np.linspace(-10.0, 110.0, 3000).reshape(30, 100)
    fractions = pulse_fractions(shift.astype(np.float32), cfg)
    assert fractions.dtype == np.float32 and fractions.shape == (30, 100, 8)
    np.testing.assert_allclose(fractions, pulse_fractions(shift, cfg), atol=1e-6)
    whole = pulse_fractions(shift, cfg, first=-2, last=60).sum(axis=-1)
    np.testing.assert_allclose(whole, 1.0, atol=1e-9)


def test_root_files_have_facile_branches_and_fixed_size_samples(tmp_path):
    files = simulate(tmp_path, 2500, seed=3, options={"channels_per_file": 1000, "threads": 1})
    assert [f.name for f in files] == ["hcal_0000.root", "hcal_0001.root", "hcal_0002.root"]
    tree = uproot.open(files[0])["Events"]
    assert set(tree.keys()) == set(BRANCHES)
    arrays = tree.arrays(library="np")
    for name in ("raw", "ped", "inNoiseADC", "inNoisePhoto"):
        assert arrays[name].shape == (1000, 8) and arrays[name].dtype == np.float32
    assert uproot.open(files[2])["Events"].num_entries == 500

    cfg = HcalSimConfig(channels_per_file=1000, threads=1)
    seed = np.random.SeedSequence(3).spawn(3)[0]
    ch = generate_channels(1000, cfg, np.random.default_rng(seed))
    for name, value in ch.branches().items():
        np.testing.assert_array_equal(arrays[name], value, err_msg=name)
    fit = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg)
    np.testing.assert_array_equal(arrays["energy"], fit.energy.astype(np.float32))
    np.testing.assert_array_equal(fit.m0, m0(ch.raw, ch.ped, ch.gain, cfg))
    np.testing.assert_array_equal(arrays["eraw"], fit.m0.astype(np.float32))


@pytest.mark.parametrize(("compression", "code"), [("zstd", 505), ("none", 100), ("lzma", 205)])
def test_compression_option_changes_the_codec_not_the_content(tmp_path, compression, code):
    options = {"threads": 1, "compression_level": 5}
    (lz4,) = simulate(tmp_path / "lz4", 800, seed=2, options=options)
    (other,) = simulate(
        tmp_path / compression, 800, seed=2, options={**options, "compression": compression}
    )
    with uproot.open(lz4) as a, uproot.open(other) as b:
        assert a.file.fCompress == 405 and b.file.fCompress == code
        for name, value in a["Events"].arrays(library="np").items():
            np.testing.assert_array_equal(b["Events"][name].array(library="np"), value)
    assert (other.stat().st_size > lz4.stat().st_size) == (compression == "none")


def test_bad_simulate_option_names_the_key(tmp_path):
    with pytest.raises(DetlearnError, match=r"unknown option 'pu_mean_maz'.*'pu_mean_max'"):
        simulate(tmp_path, 10, seed=0, options={"pu_mean_maz": 50})
    with pytest.raises(DetlearnError, match="option 'crosstalk'"):
        config_from_options({"crosstalk": 1.5})
    with pytest.raises(DetlearnError, match="energy_min"):
        config_from_options({"energy_min": 10.0, "energy_max": 5.0})


def test_mahi_lite_recovers_noiseless_amplitudes_exactly_with_out_of_time_pileup():
    cfg = HcalSimConfig(slew_max=0.0)  # fixed templates: the data are exactly the model
    rng = np.random.default_rng(11)
    n = 500
    # Out-of-time pulses are absent or large enough to fail the one-pulse fit (chiSqSwitch).
    amps = rng.uniform(2e3, 1e4, (n, 3)) * (rng.random((n, 3)) < 0.7)
    amps[:, 1] = rng.uniform(50, 2e4, n)
    baseline = rng.uniform(-3, 3, n)
    templates = np.stack([template_fractions(25.0 * k, cfg) for k in (-1, 0, 1)])
    pulse = amps @ templates + baseline[:, None]
    ped = np.full((n, 8), 17.3)
    gain = rng.uniform(5e-4, 7e-4, n)
    for switch in (10.0, None):
        fit = mahi_lite(pulse + ped, ped, gain, np.ones((n, 8)), cfg, chi2_switch=switch)
        np.testing.assert_allclose(fit.amplitudes, amps, rtol=1e-6, atol=1e-6 * amps.max())
        np.testing.assert_allclose(fit.baseline, baseline, atol=1e-6 * amps.max())
        np.testing.assert_allclose(fit.energy, amps[:, 1] * gain, rtol=1e-6)
        assert np.all(fit.chi2 < 1e-6)


def _scipy_nnls(design, y, variance, nonnegative):
    """scipy's NNLS, a free parameter split into a positive and a negative part."""
    sw = 1 / np.sqrt(variance)
    cols = [design[j] for j in range(len(design))]
    cols += [-design[j] for j in range(len(design)) if not nonnegative[j]]
    sol, resid = nnls((np.stack(cols, axis=1) * sw[:, None]), y * sw)
    x = sol[: len(design)].copy()
    free = [j for j in range(len(design)) if not nonnegative[j]]
    x[free] -= sol[len(design) :]
    return x, resid**2


@pytest.mark.parametrize("dynamic_pedestal", [True, False])
def test_batched_nnls_agrees_with_scipy_on_simulated_channels(dynamic_pedestal):
    cfg = HcalSimConfig()
    ch = _gen(300, seed=2)
    y = (ch.raw - ch.ped).astype(np.float64)
    shift = time_slew(m0(ch.raw, ch.ped, 1.0, cfg), cfg)
    design = np.stack([template_fractions(shift + 25.0 * k, cfg) for k in (-1, 0, 1)], axis=1)
    if dynamic_pedestal:
        design = np.concatenate([design, np.ones((300, 1, 8))], axis=1)
    variance = cfg.pedestal_width**2 + ch.noise_adc**2 + ch.noise_photo**2
    flags = [True, True, True] + ([False] if dynamic_pedestal else [])
    x, chi2 = batched_nnls(design, y, variance, flags)
    for i in range(300):
        ref, ref_chi2 = _scipy_nnls(design[i], y[i], variance[i], flags)
        scale = np.abs(y[i]).max()
        np.testing.assert_allclose(x[i], ref, rtol=1e-6, atol=1e-7 * scale, err_msg=str(i))
        assert chi2[i] == pytest.approx(ref_chi2, rel=1e-6, abs=1e-8)
    assert np.all(x[:, :3] >= 0)


def test_batched_nnls_rejects_more_than_four_parameters():
    with pytest.raises(ValueError, match="at most 4 parameters"):
        batched_nnls(np.eye(5), np.ones((1, 5)), np.ones((1, 5)), [True] * 5)
    with pytest.raises(ValueError, match="3 flags for 2 parameters"):
        batched_nnls(np.eye(2), np.ones((1, 2)), np.ones((1, 2)), [True] * 3)


def test_batched_nnls_agrees_with_scipy_on_random_problems():
    rng = np.random.default_rng(4)
    n, m = 200, 4
    design = rng.normal(size=(n, m, 8))
    y = rng.normal(size=(n, 8))
    variance = rng.uniform(0.5, 2.0, (n, 8))
    x, chi2 = batched_nnls(design, y, variance, [True] * m)
    for i in range(n):
        ref, ref_chi2 = _scipy_nnls(design[i], y[i], variance[i], [True] * m)
        np.testing.assert_allclose(x[i], ref, atol=1e-9)
        assert chi2[i] == pytest.approx(ref_chi2, rel=1e-9, abs=1e-12)


def test_non_finite_samples_give_nan_for_their_channel_only():
    cfg = HcalSimConfig()
    ch = _gen(6, seed=1)
    raw, noise = ch.raw.copy(), ch.noise_adc.copy()
    raw[1, 3], raw[2, 5], noise[3, 0] = np.nan, np.inf, np.nan
    fit = mahi_lite(raw, ch.ped, ch.gain, noise, cfg)
    clean = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg)
    bad = np.array([False, True, True, True, False, False])
    assert np.isnan(fit.energy[bad]).all() and np.isnan(fit.amplitudes[bad]).all()
    np.testing.assert_array_equal(fit.energy[~bad], clean.energy[~bad])
    eraw = m0(raw, ch.ped, ch.gain, cfg)
    assert np.isnan(eraw[1:3]).all() and np.isfinite(eraw[[0, 3, 4, 5]]).all()
    adc, width = qie_quantize(np.array([np.nan, np.inf, -np.inf, 1e30]), cfg)
    assert np.isnan(adc[0]) and np.isnan(width[0])
    assert adc[1] == adc[3] == adc[1:].max() and adc[2] == adc[1:].min()


def test_m0_and_mahi_lite_are_unbiased_at_high_energy_without_pileup():
    options = {**HIGH_E, "calibration_error": 0.0}
    cfg = HcalSimConfig(**options)
    ch = _gen(20_000, **options)
    ratio = m0(ch.raw, ch.ped, ch.gain, cfg) / ch.gen_energy
    assert abs(ratio.mean() - 1) < 4 * ratio.std() / np.sqrt(len(ratio)) + 1e-3
    # NNLS reads some noise as positive out-of-time pulses, at the in-time pulse's expense.
    ratio = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg).energy / ch.gen_energy
    assert abs(ratio.mean() - 1) < 5e-3


def test_mahi_lite_fits_away_the_pileup_of_neighbouring_crossings_that_biases_m0():
    options = {"pu_mean_min": 80.0, "pu_mean_max": 100.0, "pu_bx_min": -1, "pu_bx_max": 1}
    cfg = HcalSimConfig(**options, soft_fraction=0.0, energy_min=5.0)
    ch = generate_channels(5000, cfg, np.random.default_rng(7))
    truth = ch.gen_energy + ch.pileup_energy[:, 1]  # both measure the in-time pileup too
    m0_error = m0(ch.raw, ch.ped, ch.gain, cfg) / truth - 1
    mahi_error = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg).energy / truth - 1
    assert m0_error.mean() > 0.04  # BX -1 leaks into the SOI and SOI + 1
    assert abs(mahi_error.mean()) < 0.01
    assert mahi_error.std() < 0.7 * m0_error.std()


def test_recipe_config_prepares_the_ntuple_columns(tmp_path):
    files = simulate(tmp_path / "sim", 3000, seed=9, options={"threads": 1})
    raw = deep_merge(
        get_recipe("hcal-energy").default_config(),
        {
            "data": {"inputs": [str(files[0])], "step_size": 1000},
            "executor": {"workers": 1},
        },
    )
    cfg = validate_config(raw)
    context = [name for name, spec in cfg.data.columns.items() if spec.role == "context"]
    assert len(context) == 36 and cfg.model.family == "regressor"
    prepare(cfg, tmp_path / "ds", progress=False)
    rows = Dataset.open(tmp_path / "ds").load(
        ["event", "raw_3", "ped_0", "inNoiseADC_5", "inNoisePhoto_7", "genE", "energy", "ieta"]
    )
    order = np.argsort(rows["event"])
    tree = uproot.open(files[0])["Events"].arrays(library="np")
    keep = tree["genE"] > 0.1
    assert 0 < (~keep).sum() and len(order) == keep.sum()
    np.testing.assert_array_equal(rows["event"][order], np.flatnonzero(keep))
    np.testing.assert_array_equal(rows["raw_3"][order], tree["raw"][keep, 3])
    np.testing.assert_array_equal(rows["ped_0"][order], tree["ped"][keep, 0])
    np.testing.assert_array_equal(rows["inNoiseADC_5"][order], tree["inNoiseADC"][keep, 5])
    np.testing.assert_array_equal(rows["inNoisePhoto_7"][order], tree["inNoisePhoto"][keep, 7])
    for name in ("genE", "energy", "ieta"):
        np.testing.assert_array_equal(rows[name][order], tree[name][keep])
