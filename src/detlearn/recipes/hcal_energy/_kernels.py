# ruff: noqa: ANN001 -- numba kernels: the types are the compiled signatures
"""Compiled (numba) loops of the HCAL recipe, one channel at a time: pileup, MAHI-lite, NNLS.

numpy over whole blocks of channels needs some 150 passes per fit (templates, variances,
normal equations, every subset's elimination), each streaming the block through memory; here
one loop does a channel's whole fit while its 8 samples sit in cache: ~3.5 × less CPU than
the numpy version had. The kernels release the GIL, so blocks of channels run on several
threads (:func:`~.simulate._in_blocks`).

- :func:`pileup_rows`: the pileup deposits of the simulator (:func:`~.simulate._pileup_energy`);
- :func:`readout_rows`: pedestals, noise and QIE digitization (:func:`quantize_values` alone
  is :func:`~.simulate.qie_quantize`);
- :func:`nnls_rows`: exact sign-constrained least squares from the normal equations, by
  enumerating the subsets of the constrained parameters (:func:`~.baselines.batched_nnls`);
- :func:`mahi_rows`: the MAHI-lite passes (:func:`~.baselines.mahi_lite` defines them);
- :func:`m0_rows`: M0 (:func:`~.baselines.m0`), the fit's starting point.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = [
    "SIZE",
    "lerp_values",
    "m0_rows",
    "mahi_rows",
    "nnls_rows",
    "pileup_rows",
    "quantize_values",
    "readout_rows",
]


@numba.njit(nogil=True, cache=True)
def pileup_rows(rng, mean, scale, out) -> None:
    """Compound-Poisson pileup: per row, Poisson(``mean``) deposits of Exp(``scale``) energy,
    each in a uniformly drawn one of the ``out.shape[1]`` bunch crossings.

    N_k ~ Poisson(mean / n_bx) independently per BX is the same as a Poisson total spread
    uniformly over the BXs. Draws from ``rng`` (a numpy Generator) row by row; ``out`` (n, n_bx).
    """
    n_bx = out.shape[1]
    energy = np.zeros(n_bx)
    for r in range(len(mean)):
        energy[:] = 0.0
        for _ in range(rng.poisson(mean[r])):
            energy[int(rng.random() * n_bx)] += rng.standard_exponential()
        for b in range(n_bx):
            out[r, b] = energy[b] * scale


@numba.njit(inline="always")
def _quantize(q, inv_lsb, code, centre, noise) -> tuple[float, float]:
    """The centre of the QIE bin of charge ``q`` and its width/√12 [fC] (the code tables).

    Charges beyond the range saturate; NaN gives NaN.
    """
    if math.isnan(q):
        return math.nan, math.nan
    step = int(min(max(q * inv_lsb, 0.0), len(code) - 1))
    adc = code[step]
    return centre[adc], noise[adc]


@numba.njit(nogil=True, cache=True)
def quantize_values(charge, inv_lsb, code, centre, noise, raw, noise_adc) -> None:
    """:func:`_quantize` of every value of the flat ``charge`` into ``raw`` and ``noise_adc``."""
    for i in range(len(charge)):
        raw[i], noise_adc[i] = _quantize(charge[i], inv_lsb, code, centre, noise)


@numba.njit(nogil=True, cache=True)
def readout_rows(
    rng, charge, pedestal, spread, width, fc_per_pe, inv_lsb, code, centre, noise, out
) -> None:
    """The readout of every channel (:func:`~.simulate._channels`, step 7-8).

    Per row of ``charge`` (n, 8) [fC]: four capacitor pedestals N(``pedestal``, ``spread``),
    capacitor c serving TS c and c + 4; per TS electronic noise N(0, ``width``); the sum
    quantized (:func:`_quantize`); MAHI's photostatistics noise √((raw − ped) fc_per_pe)
    where raw − ped > ``width``, else 0. ``out`` (4, n, 8): ped, raw, noiseADC, noisePhoto.
    """
    n, samples = charge.shape
    capacitors = 4
    ped = np.empty(capacitors)
    for r in range(n):
        for c in range(capacitors):
            ped[c] = pedestal + spread * rng.standard_normal()
        for t in range(samples):
            p = ped[t % capacitors]
            q = charge[r, t] + p + width * rng.standard_normal()
            raw, noise_adc = _quantize(q, inv_lsb, code, centre, noise)
            signal = raw - p
            out[0, r, t] = p
            out[1, r, t] = raw
            out[2, r, t] = noise_adc
            out[3, r, t] = math.sqrt(signal * fc_per_pe) if signal > width else 0.0


#: Parameters of every problem: MAHI's pulses of BX −1, 0, +1 and its baseline. Smaller
#: problems are padded (a padded parameter is constrained, never allowed: it stays 0).
SIZE = 4


@numba.njit(inline="always", error_model="numpy")
def _solve(gram, rhs, in_set, a, x) -> bool:
    """x solving the normal equations restricted to the parameters in bit mask ``in_set``.

    Gaussian elimination without pivoting (stable for SPD) of the subsystem, on a copy ``a``
    of the whole system (SIZE × SIZE + 1, the right-hand side last): the rows and pivots of
    the parameters left out are skipped (their x is 0), fixed loop bounds otherwise, which
    the compiler unrolls. False when a pivot is not positive (singular, or NaN).
    """
    for i in range(SIZE):
        for j in range(SIZE):
            a[i, j] = gram[i, j]
        a[i, SIZE] = rhs[i]
    for j in range(SIZE):
        if in_set >> j & 1:
            if not a[j, j] > 0.0:
                return False
            a[j, j] = 1.0 / a[j, j]  # the pivot's reciprocal: one division per pivot
            for i in range(j + 1, SIZE):
                if in_set >> i & 1:
                    f = a[i, j] * a[j, j]
                    for m in range(j + 1, SIZE + 1):
                        a[i, m] -= f * a[j, m]
    for j in range(SIZE - 1, -1, -1):
        x[j] = 0.0
        if in_set >> j & 1:
            acc = a[j, SIZE]
            for m in range(j + 1, SIZE):
                acc -= a[j, m] * x[m]  # x[m] = 0 for a parameter left out
            x[j] = acc * a[j, j]
    return True


@numba.njit(inline="always", error_model="numpy")
def _nnls(gram, rhs, free, allowed, first, known, x, trial, order, a) -> float:
    """Exact NNLS from the normal equations of one problem; returns the score x·r = y'Wy − χ².

    ``free`` and ``allowed`` are bit masks over the SIZE parameters: the free ones are
    unconstrained, the ``allowed`` ones ≥ 0, all others 0. The optimum is the unconstrained
    solution on the free parameters plus some subset S of the allowed ones, and every
    feasible subset solution is a feasible point: the optimum is the feasible subset
    solution of largest score. A feasible one where no parameter left out would improve χ²
    (gradient r_j − (G x)_j ≤ 0: the KKT conditions of this convex problem) is that optimum,
    so the search stops there. It tries S = ``first`` (a guess, e.g. the previous fit's;
    with ``known``, ``x`` holds its solution on entry, which is then not solved again), then
    all allowed parameters, then those of them that solution has positive, then every other
    subset, largest masks first. ``x`` gets the solution; ``trial`` (SIZE), ``order``
    (3 + 2^SIZE) and ``a`` are scratch.
    """
    best = -math.inf
    for j in range(SIZE):
        trial[j] = x[j]
        x[j] = 0.0
    order[0] = first & allowed
    order[1] = allowed
    count = 2
    tried = 0  # bit S: subset S was tried
    k = 0
    while k < count:
        subset = order[k]
        k += 1
        if tried >> subset & 1:
            continue
        tried |= 1 << subset
        solved = (k == 1 and known) or _solve(gram, rhs, free | subset, a, trial)
        if subset == allowed:  # queue the other subsets
            if solved:
                guess = 0
                for j in range(SIZE):
                    if allowed >> j & 1 and trial[j] > 0.0:
                        guess |= 1 << j
                order[count] = guess
                count += 1
            other = allowed
            while other:
                other = (other - 1) & allowed
                order[count] = other
                count += 1
        if not solved:
            continue
        feasible = True
        score = 0.0
        for j in range(SIZE):
            if subset >> j & 1 and not trial[j] >= 0.0:
                feasible = False
            score += trial[j] * rhs[j]
        if not feasible:
            continue
        if score > best:
            best = score
            for j in range(SIZE):
                x[j] = trial[j]
        optimal = True
        for j in range(SIZE):
            if allowed >> j & 1 and not subset >> j & 1:
                gradient = rhs[j]
                for i in range(SIZE):
                    gradient -= gram[j, i] * trial[i]
                if gradient > 0.0:
                    optimal = False
        if optimal:
            break
    return best


@numba.njit(nogil=True, cache=True, error_model="numpy")
def nnls_rows(gram, rhs, free, allowed, x, score) -> None:
    """:func:`_nnls` per row: ``gram`` (n, SIZE, SIZE), ``rhs`` (n, SIZE) → ``x``, ``score``."""
    trial = np.empty(SIZE)
    order = np.empty(3 + (1 << SIZE), np.int64)
    a = np.empty((SIZE, SIZE + 1))
    for r in range(len(rhs)):
        score[r] = _nnls(gram[r], rhs[r], free, allowed, allowed, False, x[r], trial, order, a)


@numba.njit(inline="always", error_model="numpy")
def _lerp(table, x) -> float:
    """``table`` linearly interpolated at the fractional index x (clipped to the table)."""
    x = min(max(x, 0.0), len(table) - 1.001)
    i = int(x)
    return table[i] + (x - i) * (table[i + 1] - table[i])


@numba.njit(nogil=True, cache=True)
def lerp_values(table, x, out) -> None:
    """:func:`_lerp` of ``table`` at every fractional index of the flat ``x`` into ``out``."""
    for i in range(len(x)):
        out[i] = _lerp(table, x[i])


@numba.njit(inline="always", error_model="numpy")
def _slew(charge, slew) -> float:
    """:func:`~.simulate.time_slew` of a charge [fC]: clip(a + b ln max(Q, 1), 0, t_max) [ns]."""
    return min(max(slew[0] + slew[1] * math.log(max(charge, 1.0)), 0.0), slew[2])


@numba.njit(inline="always", error_model="numpy")
def _m0(y, survival, u0, inv_step, edges, soi, slew, nominal) -> float:
    """M0's in-time charge [fC] of one pulse (:func:`~.baselines.m0`).

    (Q_SOI + Q_SOI+1) over the mean pulse's fraction in those TS at the slew of the total
    charge, estimated with the ``nominal`` fraction: one step of the fixed point. ``edges``
    holds the edges of TS −1 .. 9, so TS t starts at ``edges[t + 1]``.
    """
    q = y[soi] + y[soi + 1]
    shift = _slew(q / nominal, slew)
    inside = _lerp(survival, (edges[soi + 1] - shift - u0) * inv_step)
    return q / (inside - _lerp(survival, (edges[soi + 3] - shift - u0) * inv_step))


@numba.njit(inline="always")
def _finite(row) -> bool:
    """Whether every value of ``row`` is finite."""
    for value in row:
        if not math.isfinite(value):
            return False
    return True


@numba.njit(nogil=True, cache=True, error_model="numpy")
def m0_rows(pulse, survival, u0, step, edges, soi, slew, nominal, out) -> None:
    """:func:`_m0` of every row of ``pulse`` (n, 8) into ``out`` (n,); NaN for a row with a
    non-finite sample.
    """
    for r in range(len(pulse)):
        out[r] = math.nan
        if _finite(pulse[r]):
            out[r] = _m0(pulse[r], survival, u0, 1.0 / step, edges, soi, slew, nominal)


@numba.njit(nogil=True, cache=True, error_model="numpy")
def mahi_rows(
    pulse,
    noise_adc,
    survival,
    density,
    u0,
    step,
    edges,
    soi,
    slew,
    nominal,
    pedestal_width,
    fc_per_pe,
    jitter,
    iterations,
    dynamic_pedestal,
    chi2_switch,
    amplitudes,
    baseline,
    chi2,
    m0,
) -> None:
    """MAHI-lite's passes on every channel (the arithmetic of :func:`~.baselines.mahi_lite`).

    Args:
        pulse, noise_adc: ``(n, 8)`` pedestal-subtracted charge and ADC noise [fC].
        survival, density, u0, step: the jitter-averaged pulse table (S̄, p̄ at u0 + step·i).
        edges: ``(11,)`` times of the edges of TS −1 .. 9 in the undelayed pulse's time [ns].
        soi: the sample of interest; slew: (a, b, t_max) of the time slew [ns];
        nominal: the fraction of a pulse in the SOI and SOI + 1 that M0 starts from.
        pedestal_width, fc_per_pe, jitter: noise constants [fC, fC/pe, ns].
        iterations: passes (≥ 1); dynamic_pedestal: fit the baseline b.
        chi2_switch: keep the in-time pulse alone where its χ² ≤ this (∞ to never).
        amplitudes, baseline, chi2, m0: outputs, ``(n, 3)``, ``(n,)``, ``(n,)``, ``(n,)``; m0
            is M0's charge, whose positive part is the first pass's in-time amplitude A₀.
            All NaN for a channel with a non-finite sample or noise.
    """
    n, samples = pulse.shape
    # Parameters 0-2: BX -1, 0, +1 (>= 0); 3: the baseline, free or fixed at 0.
    free = 0b1000 if dynamic_pedestal else 0
    all_bx, in_time_only = 0b0111, 0b0010
    templates = np.ones((SIZE, samples))
    slope = np.empty(samples)
    surv = np.empty(samples + 3)
    dens = np.empty(samples + 3)
    model = np.empty(samples)
    gram = np.empty((SIZE, SIZE))
    rhs = np.empty(SIZE)
    x = np.empty(SIZE)
    trial = np.empty(SIZE)
    order = np.empty(3 + (1 << SIZE), np.int64)
    a = np.empty((SIZE, SIZE + 1))
    inv_step = 1.0 / step
    stride = round((edges[1] - edges[0]) * inv_step)  # table steps between TS edges
    last_index = len(survival) - 2
    for r in range(n):
        y = pulse[r]
        if not (_finite(y) and _finite(noise_adc[r])):
            amplitudes[r, :] = math.nan
            baseline[r] = chi2[r] = m0[r] = math.nan
            continue
        m0[r] = _m0(y, survival, u0, inv_step, edges, soi, slew, nominal)
        amp = max(m0[r], 0.0)
        for t in range(samples):
            model[t] = y[t]
        score = 0.0
        y_w_y = 0.0
        last = all_bx  # the pulses of the last full fit: the first guess without chiSqSwitch
        for _ in range(iterations):
            shift = _slew(amp, slew)
            # The edges are a whole number of table steps apart: one fractional position.
            u = (edges[0] - shift - u0) * inv_step
            i0 = math.floor(u)
            w = u - i0
            for e in range(samples + 3):
                at = min(max(int(i0) + e * stride, 0), last_index)
                surv[e] = survival[at] + w * (survival[at + 1] - survival[at])
                dens[e] = density[at] + w * (density[at + 1] - density[at])
            # Fractions of TS -1 .. 8 are surv[i] - surv[i + 1]; BX k reads TS t at index
            # t + 1 - k (BX -1 one TS later, BX +1 one TS earlier).
            for t in range(samples):
                for k in range(3):
                    i = t + 2 - k
                    templates[k, t] = surv[i] - surv[i + 1]
                slope[t] = dens[t + 1] - dens[t + 2]
            # The normal equations A'WA, A'Wy and y'Wy, W = 1/σ² with MAHI's variance: pedestal,
            # ADC, photostatistics above the pedestal width, and the in-time pulse's jitter.
            y_w_y = 0.0
            gram[:] = 0.0
            rhs[:] = 0.0
            for t in range(samples):
                photo = fc_per_pe * model[t] if model[t] > pedestal_width else 0.0
                jit = amp * jitter * slope[t]
                weight = 1.0 / (pedestal_width**2 + noise_adc[r, t] ** 2 + photo + jit * jit)
                y_w_y += weight * y[t] * y[t]
                for i in range(SIZE):
                    weighted = templates[i, t] * weight
                    rhs[i] += weighted * y[t]
                    for j in range(i + 1):
                        gram[i, j] += weighted * templates[j, t]
            for i in range(SIZE):
                for j in range(i):
                    gram[j, i] = gram[i, j]
            alone = False
            first, known = last, False
            if chi2_switch < math.inf:
                score = _nnls(
                    gram, rhs, free, in_time_only, in_time_only, False, x, trial, order, a
                )
                alone = y_w_y - score <= chi2_switch
                # The in-time fit is the first candidate of the full one, already solved.
                first, known = (in_time_only if x[1] > 0.0 else 0), True
            if not alone:
                score = _nnls(gram, rhs, free, all_bx, first, known, x, trial, order, a)
                last = 0
                for j in range(3):
                    if x[j] > 0.0:
                        last |= 1 << j
            amp = x[1]
            for t in range(samples):
                model[t] = x[0] * templates[0, t] + x[1] * templates[1, t] + x[2] * templates[2, t]
        for k in range(3):
            amplitudes[r, k] = x[k]
        baseline[r] = x[3]
        chi2[r] = max(y_w_y - score, 0.0)
