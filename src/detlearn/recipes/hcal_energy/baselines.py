"""The reconstructions a learned HCAL regressor is compared with: MAHI-lite and M0.

- :func:`mahi_lite` is CMS's MAHI [S32, S33] reduced to its core: the 8 pedestal-subtracted
  TS are fit, by non-negative least squares, as pulses of the bunch crossings −1, 0, +1 plus a
  free baseline (MAHI's dynamic pedestal), weighted by MAHI's per-TS noise; the noise and the
  time slew of the templates are updated from the fit and the fit repeated. E = A₀ × gain.
  As MAHI's ``chiSqSwitch``, a pass keeps the in-time pulse alone where that fits well.
  Not modelled: the correlated pedestal term of the noise.
- :func:`m0` is CMS's simplest method: the SOI and SOI + 1 summed and divided by the fraction
  of a pulse they contain.
- :func:`batched_nnls` is the exact solver underneath, for millions of tiny problems at once.

MAHI-lite, M0 and the solver run compiled, one channel per loop iteration (:mod:`._kernels`).

Both reconstructions use the simulator's own pulse shape averaged over its time jitter
(:func:`template_fractions`), as MAHI uses the mean MC pulse shape: perfect templates, a
comparison favourable to the baselines.

Example:
    >>> from detlearn.recipes.hcal_energy.simulate import HcalSimConfig, generate_channels
    >>> cfg = HcalSimConfig(pu_mean_max=0.0, energy_min=50.0, soft_fraction=0.0)
    >>> ch = generate_channels(2000, cfg, np.random.default_rng(0))
    >>> fit = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg)
    >>> 0.97 < float(np.mean(fit.energy / ch.gen_energy)) < 1.03
    True
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from detlearn._blocks import in_blocks
from detlearn.recipes.hcal_energy._kernels import (
    SIZE,
    lerp_values,
    m0_rows,
    mahi_rows,
    nnls_rows,
)
from detlearn.recipes.hcal_energy.config import BLOCK, SAMPLES, SOI, TS_NS, HcalSimConfig
from detlearn.recipes.hcal_energy.pulse import pulse_density, pulse_shape, time_slew

__all__ = ["ACTIVE_BX", "MahiResult", "batched_nnls", "m0", "mahi_lite", "template_fractions"]

#: Bunch crossings MAHI fits, relative to the SOI.
ACTIVE_BX = (-1, 0, 1)
# Grid of the tabulated mean pulse [ns]: linear interpolation is good to ~1e-5 of the charge.
_TABLE_STEP = 0.05
# Pulse time after the onset where the table ends; the tail is below 1e-12 there [ns].
_TABLE_SPAN = 1200.0
# Reach of the jitter average, in units of the jitter σ.
_JITTER_REACH = 8.0


@dataclass(frozen=True)
class MahiResult:
    """A MAHI-lite fit of every channel.

    Attributes:
        energy: ``(n,)`` in-time energy A₀ × gain [GeV].
        amplitudes: ``(n, 3)`` total charge of the pulses of BX −1, 0, +1 [fC] (all ≥ 0).
        baseline: ``(n,)`` fitted pedestal shift per TS [fC] (0 without dynamic pedestal).
        chi2: ``(n,)`` χ² of the last fit.
        m0: ``(n,)`` the M0 energy the fit started from [GeV] (:func:`m0`).
    """

    energy: np.ndarray
    amplitudes: np.ndarray
    baseline: np.ndarray
    chi2: np.ndarray
    m0: np.ndarray


def batched_nnls(
    design: np.ndarray,
    data: np.ndarray,
    variance: np.ndarray,
    nonnegative: Sequence[bool],
) -> tuple[np.ndarray, np.ndarray]:
    """Exact weighted least squares with sign constraints, for many small problems at once.

    For every row n, minimize χ² = Σ_t (y_t − Σ_j x_j A_jt)² / σ²_t subject to x_j ≥ 0 where
    ``nonnegative[j]`` (the other parameters are free). The optimum is the unconstrained
    solution on some subset S of the parameters (the free ones plus the positive ones), and
    every feasible subset solution is a feasible point, so the optimum is the feasible subset
    solution of least χ². Subsets are solved, compiled, one row at a time until one is
    feasible and meets the KKT conditions (else all 2^c of the c constrained parameters are
    tried and the best feasible one kept): exact NNLS, for m ≤ 4 parameters (MAHI's three
    pulses and baseline).

    Args:
        design: ``(m, T)`` templates shared by all rows, or ``(n, m, T)``; m ≤ 4.
        data: ``(n, T)`` measurements y.
        variance: ``(n, T)`` σ² per measurement (> 0).
        nonnegative: ``m`` flags, True for a parameter constrained to be ≥ 0.

    Returns:
        ``(x, chi2)``: ``(n, m)`` parameters (0 outside the chosen subset) and ``(n,)`` χ².

    Raises:
        ValueError: ``nonnegative`` does not have m flags, or m > 4.

    Example:
        >>> A = np.array([[1.0, 0.0], [0.0, 1.0]])
        >>> x, chi2 = batched_nnls(A, np.array([[2.0, -1.0]]), np.ones((1, 2)), [True, True])
        >>> x.tolist(), chi2.tolist()
        ([[2.0, 0.0]], [1.0])
    """
    data = np.asarray(data, dtype=np.float64)
    design = np.asarray(design, dtype=np.float64)
    design = np.broadcast_to(design, (len(data), *design.shape[-2:]))
    m = design.shape[1]
    if len(nonnegative) != m:
        raise ValueError(f"nonnegative has {len(nonnegative)} flags for {m} parameters")
    if m > SIZE:
        raise ValueError(f"batched_nnls solves at most {SIZE} parameters (got {m})")
    weight = 1.0 / np.asarray(variance, dtype=np.float64)
    weighted = design * weight[:, None, :]
    # Padded to SIZE parameters with zeros: a padded parameter is never allowed, never solved.
    gram = np.zeros((len(data), SIZE, SIZE))
    gram[:, :m, :m] = weighted @ design.transpose(0, 2, 1)
    rhs = np.zeros((len(data), SIZE))
    rhs[:, :m] = (weighted @ data[:, :, None])[:, :, 0]
    y_w_y = np.einsum("nt,nt->n", weight * data, data)
    free = sum(1 << j for j in range(m) if not nonnegative[j])
    x, score = np.empty_like(rhs), np.empty(len(rhs))
    nnls_rows(gram, rhs, free, sum(1 << j for j in range(m) if nonnegative[j]), x, score)
    return x[:, :m], np.maximum(y_w_y - score, 0.0)


@functools.lru_cache(maxsize=8)
def _mean_pulse_table(cfg: HcalSimConfig) -> tuple[float, np.ndarray, np.ndarray]:
    """The pulse's survival function and density averaged over the Gaussian time jitter.

    Returns ``(u0, S̄, p̄)`` on the grid u0 + 0.05 ns × i: discrete convolutions of
    :func:`~.simulate.pulse_shape` and :func:`~.simulate.pulse_density` with the normalized
    jitter kernel (S̄ = 1 before the grid).
    """
    reach = int(np.ceil(_JITTER_REACH * cfg.jitter / _TABLE_STEP))
    u0 = cfg.pulse_start - reach * _TABLE_STEP
    size = int(np.ceil(_TABLE_SPAN / _TABLE_STEP)) + 2 * reach + 1
    u = u0 + _TABLE_STEP * np.arange(-reach, size + reach)
    survival, density = pulse_shape(u, cfg), pulse_density(u, cfg)
    if reach:
        kernel = np.exp(-0.5 * (_TABLE_STEP * np.arange(-reach, reach + 1) / cfg.jitter) ** 2)
        kernel /= kernel.sum()
        survival = np.convolve(survival, kernel, mode="valid")
        density = np.convolve(density, kernel, mode="valid")
    return u0, survival, density


def _mean_survival(shift: np.ndarray, cfg: HcalSimConfig, first: int, last: int) -> np.ndarray:
    """Mean pulse S̄ at the edges of TS ``first`` .. ``last``, delayed by ``shift`` ns."""
    u0, survival, _ = _mean_pulse_table(cfg)
    edges = cfg.phase + TS_NS * (np.arange(first, last + 1) - SOI)
    x = (edges - np.asarray(shift, dtype=np.float64)[..., None] - u0) * (1.0 / _TABLE_STEP)
    out = np.empty(x.size)
    lerp_values(survival, x.ravel(), out)
    return out.reshape(x.shape)


def template_fractions(
    shift: np.ndarray | float, cfg: HcalSimConfig, first: int = 0, last: int = SAMPLES
) -> np.ndarray:
    """The templates of MAHI-lite and M0: charge fractions per TS of the mean pulse.

    Like :func:`~.simulate.pulse_fractions`, for a pulse delayed by ``shift`` ns, but averaged
    over the Gaussian time jitter (σ = ``jitter``) the simulator adds to every signal: the mean
    pulse shape, which is what a fit to many pulses sees. TS ``first`` .. ``last`` − 1.

    Example:
        >>> template_fractions(0.0, HcalSimConfig()).round(3).tolist()
        [0.0, 0.0, 0.008, 0.725, 0.173, 0.046, 0.023, 0.012]
    """
    survival = _mean_survival(np.asarray(shift, dtype=np.float64), cfg, first, last)
    return survival[..., :-1] - survival[..., 1:]


@functools.lru_cache(maxsize=8)
def _kernel_args(cfg: HcalSimConfig) -> tuple[Any, ...]:
    """The pulse table, TS edges and slew of the compiled kernels (:mod:`._kernels`)."""
    u0, survival, density = _mean_pulse_table(cfg)
    edges = cfg.phase + TS_NS * (np.arange(-1, SAMPLES + 2) - SOI)
    slew = np.array([cfg.slew_intercept, cfg.slew_slope, cfg.slew_max])
    # M0's first guess of the containment: that of the slowest (smallest) pulse.
    survival_soi = _mean_survival(time_slew(0.0, cfg), cfg, SOI, SOI + 2)
    nominal = float(survival_soi[0] - survival_soi[2])
    return survival, density, u0, _TABLE_STEP, edges, SOI, slew, nominal


def m0(
    raw: np.ndarray, ped: np.ndarray, gain: np.ndarray, cfg: HcalSimConfig | None = None
) -> np.ndarray:
    """M0 energy [GeV]: (Q_SOI + Q_SOI+1) / containment × gain.

    Q_i = raw_i − ped_i [fC]; the containment is the fraction of the mean pulse in those two TS
    (:func:`template_fractions`) at the time slew of the estimated total charge.

    Example:
        >>> cfg = HcalSimConfig()
        >>> pulse = 16000.0 * template_fractions(time_slew(16000.0, cfg), cfg)[None]
        >>> m0(pulse + 17.3, np.full((1, 8), 17.3), np.array([0.000625]), cfg).round(3).tolist()
        [10.0]
    """
    cfg = cfg or HcalSimConfig()
    pulse = np.asarray(raw, dtype=np.float64) - np.asarray(ped, dtype=np.float64)
    survival, _, *args = _kernel_args(cfg)
    charge = np.empty(len(pulse))
    m0_rows(pulse, survival, *args, charge)
    return charge * np.asarray(gain, dtype=np.float64)


def _mahi_block(
    pulse: np.ndarray,
    noise_adc: np.ndarray,
    cfg: HcalSimConfig,
    iterations: int,
    dynamic_pedestal: bool,
    chi2_switch: float | None,
) -> dict[str, np.ndarray]:
    """MAHI-lite on one block of pedestal-subtracted pulses (see :func:`mahi_lite`)."""
    n = len(pulse)
    out = {"amplitudes": np.empty((n, len(ACTIVE_BX))), "baseline": np.empty(n)}
    out["chi2"], out["m0_charge"] = np.empty(n), np.empty(n)
    mahi_rows(
        pulse,
        noise_adc,
        *_kernel_args(cfg),
        cfg.pedestal_width,
        cfg.fc_per_pe,
        cfg.jitter,
        iterations,
        dynamic_pedestal,
        np.inf if chi2_switch is None else chi2_switch,
        out["amplitudes"],
        out["baseline"],
        out["chi2"],
        out["m0_charge"],
    )
    return out


def mahi_lite(
    raw: np.ndarray,
    ped: np.ndarray,
    gain: np.ndarray,
    noise_adc: np.ndarray,
    cfg: HcalSimConfig | None = None,
    *,
    iterations: int = 2,
    dynamic_pedestal: bool = True,
    chi2_switch: float | None = 10.0,
    threads: int | None = None,
) -> MahiResult:
    """MAHI-lite energy: NNLS fit of the BX −1, 0, +1 pulses plus a baseline.

    With Q_t = raw_t − ped_t [fC] and template T_k,t = ``template_fractions(s + 25k)`` (s the
    time slew of the current in-time amplitude A₀), minimize Σ_t (Q_t − Σ_k A_k T_k,t − b)² / σ²_t
    over A_k ≥ 0 and a free baseline b (:func:`batched_nnls`), with MAHI's per-TS variance

        σ²_t = pedestal_width² + noiseADC_t² + fc_per_pe × M_t [M_t > pedestal_width]
               + (A₀ × jitter × ∂T_0,t/∂s)²,

    M_t the fitted pulse charge (the measured Q_t in the first pass, which gives MAHI's
    ``inNoisePhoto``), ∂T_0,t/∂s from the mean pulse's density. The first pass starts from
    M0's A₀ (returned as ``m0``); each of ``iterations`` passes updates slew and variance from
    the previous one. E = A₀ × gain.

    Args:
        raw, ped, noise_adc: ``(n, 8)`` branches ``raw``, ``ped``, ``inNoiseADC`` [fC].
        gain: ``(n,)`` [GeV/fC].
        cfg: the simulator config (pulse shape, slew, noise constants); default its defaults.
        iterations: fit passes (≥ 1).
        dynamic_pedestal: fit the baseline b (MAHI's ``dynamicPed``); else b = 0.
        chi2_switch: MAHI's ``chiSqSwitch``: each pass first fits the in-time pulse (and b)
            alone and keeps that fit where χ² ≤ ``chi2_switch``; None always fits all three.
        threads: threads over blocks of channels (default ``cfg.threads``).

    Example:
        >>> cfg = HcalSimConfig(slew_max=0.0)
        >>> t = [template_fractions(25.0 * k, cfg) for k in (-1, 0, 1)]
        >>> q = 3000.0 * t[0] + 8000.0 * t[1] + 5000.0 * t[2] + 2.0
        >>> fit = mahi_lite(q[None] + 17.3, np.full((1, 8), 17.3), np.array([0.000625]),
        ...                 np.ones((1, 8)), cfg)
        >>> fit.amplitudes.round(6).tolist(), round(float(fit.energy[0]), 6)
        ([[3000.0, 8000.0, 5000.0]], 5.0)
    """
    cfg = cfg or HcalSimConfig()
    if iterations < 1:
        raise ValueError(f"iterations must be >= 1 (got {iterations})")
    raw, ped, noise = np.asarray(raw), np.asarray(ped), np.asarray(noise_adc)

    def work(rows: slice) -> dict[str, np.ndarray]:
        # Converted block by block, on the worker threads.
        pulse = raw[rows].astype(np.float64) - ped[rows].astype(np.float64)
        noise_block = noise[rows].astype(np.float64)
        return _mahi_block(pulse, noise_block, cfg, iterations, dynamic_pedestal, chi2_switch)

    out = in_blocks(len(raw), BLOCK, work, threads or cfg.threads)
    gain = np.asarray(gain, dtype=np.float64)
    energy = out["amplitudes"][:, ACTIVE_BX.index(0)] * gain
    return MahiResult(energy=energy, m0=out.pop("m0_charge") * gain, **out)
