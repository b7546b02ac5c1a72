# ruff: noqa: ANN001 -- numba kernels: the types are the compiled signatures
"""Compiled (numba) loop of the ECal simulator: every event's deposits, summed per cell, read out.

One event at a time, its shower energy packets and charged tracks are accumulated into a dense
(layer, cell) scratch that stays in cache, then read out (sampling smear, noise, threshold) in
(layer, cell) order. numpy would need a sort of every packet of the block to sum per cell; here
the sum is one add per packet. The kernel releases the GIL, so blocks of events run on several
threads (:func:`~.simulate.simulate_block`), each with its own generator.

:func:`deposit_events` documents the inputs; :mod:`.simulate` builds them.
"""

from __future__ import annotations

import math

import numba
import numpy as np

__all__ = ["deposit_events"]

_SQRT3 = math.sqrt(3.0)
# Transverse profile: a fraction _CORE of the packets in the core of radius R_C = r68 / 2,
# the rest in a tail of radius _TAIL R_C; with these, 68 % lie within r68 (physics.md §2.2).
_CORE = 0.8
_TAIL = 4.0
# Longitudinal fluctuations, relative Gaussian widths of t_max and of a (physics.md §2.2 [A]).
_TMAX_JITTER = 0.1
_A_JITTER = 0.2
_TMAX_MIN = 0.2  # X0: showers below ~E_c still deposit over a short depth
_A_MIN = 1.1
# Packet azimuths from a table: 2π/4096 steps move a packet at most 0.08 mm per 100 mm.
_TURNS = 4096
_COS = np.cos(2.0 * np.pi * (np.arange(_TURNS) + 0.5) / _TURNS)
_SIN = np.sin(2.0 * np.pi * (np.arange(_TURNS) + 0.5) / _TURNS)
# Path factor 1/cosθ of a track through a silicon layer is capped (tracks nearly along a layer).
_MAX_PATH_FACTOR = 10.0


@numba.njit(inline="always")
def _cell(x, y, parity, grid_index, q0, r0, radius, shift) -> int:
    """Compact id of the readout cell at (x, y) [mm] in a layer of ``parity``; −1: none."""
    if not (abs(x) < 1e4 and abs(y) < 1e4):
        return -1
    x = x - shift * parity
    qf = (2.0 / 3.0) * x / radius
    rf = (-x / 3.0 + _SQRT3 / 3.0 * y) / radius
    sf = -qf - rf
    q, r, s = np.rint(qf), np.rint(rf), np.rint(sf)
    dq, dr, ds = abs(q - qf), abs(r - rf), abs(s - sf)
    if dq > dr and dq > ds:
        q = -r - s
    elif dr > ds:
        r = -q - s
    i, j = int(q) - q0, int(r) - r0
    if i < 0 or j < 0 or i >= grid_index.shape[1] or j >= grid_index.shape[2]:
        return -1
    return grid_index[parity, i, j]


@numba.njit(inline="always")
def _touch(k, marked, touched, n_touched) -> int:
    """Cell ``k`` listed once among the event's touched cells; the new count of them."""
    if not marked[k]:
        marked[k] = True
        touched[n_touched] = k
        n_touched += 1
    return n_touched


@numba.njit(inline="always")
def _gamma_p(a, x) -> float:
    """The regularized lower incomplete gamma function P(a, x), x > 0 (series below a + 1,
    Lentz's continued fraction above; Numerical Recipes §6.2), to 1e-12."""
    prefactor = math.exp(-x + a * math.log(x) - math.lgamma(a))
    if x < a + 1.0:
        term = total = 1.0 / a
        ap = a
        for _ in range(500):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-12:
                break
        return min(total * prefactor, 1.0)
    tiny = 1e-300
    bn = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / bn
    h = d
    for i in range(1, 500):
        an = -i * (i - a)
        bn += 2.0
        d = an * d + bn
        d = tiny if abs(d) < tiny else d
        c = bn + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-12:
            break
    return max(1.0 - prefactor * h, 0.0)


@numba.njit(nogil=True, cache=True)
def deposit_events(rng, showers, tracks, noise_hits, geometry, tables, params, out) -> int:
    """Simulate the readout of every event; return the number of hits written to ``out``.

    Args:
        rng: numpy Generator (its bit generator advances; compiled, a draw costs a few ns,
            several times less than numba's own ``np.random``).
        showers: ``(offsets, energy, x, y, z, depth, tx, ty, cos, start, c)``: per event the
            range ``offsets[i]:offsets[i + 1]`` of its EM showers: energy [MeV], a point
            (x, y, z) [mm] on the axis where the depth is ``depth`` [X0], slopes dx/dz and
            dy/dz, cosθ to the beam, start of the shower along its axis [X0], and the constant
            C of t_max = ln(E/E_c) + C (−0.5 for e±, +0.5 for γ).
        tracks: ``(offsets, kinetic, x, y, z, depth, tx, ty, cos, mass, charge, hadronic)``:
            charged tracks from a vertex at depth ``depth`` [X0]: kinetic energy [MeV],
            mass [MeV], charge [e], and whether they interact hadronically (1.0) or not.
        noise_hits: per event, the number of cells read out on noise alone.
        geometry: ``(layer_z, depth_edges, x0_in_front, sampling_factor, grid_index, q0, r0,
            n_cells, cell_radius, layer_shift, x0_mm, lambda_mm)``.
        tables: ``(r68_step, r68, range_t, range_r, bg, ionization)``: r68 [mm] every
            ``r68_step`` X0 along the shower axis; the proton CSDA range in tungsten [mm] at
            kinetic energies ``range_t`` [MeV]; silicon ionization relative to a MIP at βγ.
        params: ``(packet_energy, critical_energy, b, smear_scale, noise_sigma, threshold,
            mip_mpv, mip_xi, proton_mass, trigger_layers)`` [MeV, except b [1/X0] and the
            number of trigger layers]; smear_scale = s² · 1000 MeV for a stochastic term s.
        out: ``(event, layer, cell, e_rec, trigger_sum)``: hit arrays (long enough for every
            packet, track layer and noise hit) and per event the summed E_rec of the trigger
            layers [MeV].
    """
    sh_off, sh_e, sh_x, sh_y, sh_z, sh_t, sh_tx, sh_ty, sh_cos, sh_start, sh_c = showers
    tr_off, tr_t, tr_x, tr_y, tr_z, tr_depth, tr_tx, tr_ty, tr_cos, tr_m, tr_q, tr_had = tracks
    layer_z, edges, x0_front, sampling, grid, q0, r0, n_cells, radius, shift, x0_mm, lam = geometry
    r68_step, r68, range_t, range_r, bg_table, ion_table = tables
    eps, e_crit, b, smear, sigma, threshold, mpv, xi, m_p, trig_layers = params
    o_event, o_layer, o_cell, o_e, o_trig = out

    n_layers = len(layer_z)
    stride = n_cells.max()
    shower_e = np.zeros(n_layers * stride)
    track_e = np.zeros(n_layers * stride)
    forced = np.zeros(n_layers * stride)
    marked = np.zeros(n_layers * stride, dtype=np.bool_)
    touched = np.empty(n_layers * stride, dtype=np.int64)
    n_out = 0
    for ev in range(len(sh_off) - 1):
        n_touched = 0
        for s in range(sh_off[ev], sh_off[ev + 1]):
            energy, cos = sh_e[s], sh_cos[s]
            if energy <= 0.0 or cos <= 0.0:
                continue
            n_packets = max(1, int(energy / eps + 0.5))
            packet = energy / n_packets
            t_max = max(math.log(energy / e_crit) + sh_c[s], _TMAX_MIN)
            a = max((1.0 + b * t_max) * (1.0 + _A_JITTER * rng.standard_normal()), _A_MIN)
            t_max = max(t_max * (1.0 + _TMAX_JITTER * rng.standard_normal()), _TMAX_MIN)
            rate = (a - 1.0) / t_max
            # Packets are iid Gamma(a, rate) along the axis: their counts per layer are
            # multinomial in the profile's layer fractions, drawn as a chain of binomials.
            left, below = n_packets, 0.0
            for layer in range(n_layers):
                if left == 0:
                    break
                to = ((edges[layer + 1] - sh_t[s]) / cos - sh_start[s]) * rate
                upto = _gamma_p(a, to) if to > 0.0 else 0.0
                share = upto - below
                if share <= 0.0:
                    continue
                count = rng.binomial(left, min(share / (1.0 - below), 1.0))
                left -= count
                below = upto
                if count == 0:
                    continue
                dz = layer_z[layer] - sh_z[s]
                ax = sh_x[s] + sh_tx[s] * dz
                ay = sh_y[s] + sh_ty[s] * dz
                along = max((x0_front[layer] - sh_t[s]) / cos - sh_start[s], 0.0)
                core = 0.5 * r68[min(int(along / r68_step + 0.5), len(r68) - 1)]
                e_si = packet / sampling[layer]
                parity = layer % 2
                for _ in range(count):
                    scale = core if rng.random() < _CORE else _TAIL * core
                    u = rng.random()
                    rho = scale * math.sqrt(u / (1.0 - u))
                    turn = int(rng.random() * _TURNS)
                    x = ax + rho * _COS[turn]
                    y = ay + rho * _SIN[turn]
                    cell = _cell(x, y, parity, grid, q0, r0, radius, shift)
                    if cell < 0:
                        continue
                    k = layer * stride + cell
                    n_touched = _touch(k, marked, touched, n_touched)
                    shower_e[k] += e_si

        for t in range(tr_off[ev], tr_off[ev + 1]):
            mass, charge = tr_m[t], tr_q[t]
            to_proton = m_p / mass
            range_scale = 1.0 / (to_proton * charge * charge)
            left = range_scale * np.interp(tr_t[t] * to_proton, range_t, range_r)
            path_factor = 1.0 / max(tr_cos[t], 1.0 / _MAX_PATH_FACTOR)
            depth = tr_depth[t]
            for layer in range(n_layers):
                gap = x0_front[layer] - depth
                if gap < 0.0:
                    continue
                w_path = gap * x0_mm * path_factor
                depth = x0_front[layer]
                left -= w_path
                if left <= 0.0:
                    break
                if tr_had[t] > 0.0 and rng.random() < -math.expm1(-w_path / lam):
                    break
                kinetic = np.interp(left / range_scale, range_r, range_t) / to_proton
                bg = math.sqrt(kinetic * kinetic + 2.0 * kinetic * mass) / mass
                ionization = np.interp(bg, bg_table, ion_table)
                n = rng.standard_normal()
                landau = -math.log(max(n * n, 1e-300))
                de = charge * charge * ionization * (mpv + xi * landau) * path_factor
                de = min(max(de, 0.0), kinetic)
                dz = layer_z[layer] - tr_z[t]
                x = tr_x[t] + tr_tx[t] * dz
                y = tr_y[t] + tr_ty[t] * dz
                cell = _cell(x, y, layer % 2, grid, q0, r0, radius, shift)
                if cell < 0:
                    continue
                k = layer * stride + cell
                n_touched = _touch(k, marked, touched, n_touched)
                track_e[k] += de

        for _ in range(noise_hits[ev]):
            layer = min(int(rng.random() * n_layers), n_layers - 1)
            parity = layer % 2
            cell = min(int(rng.random() * n_cells[parity]), n_cells[parity] - 1)
            k = layer * stride + cell
            if marked[k]:
                continue  # this cell's noise is drawn with its signal
            marked[k] = True
            touched[n_touched] = k
            n_touched += 1
            # The Gaussian tail above the threshold, to first order in sigma / threshold.
            forced[k] = threshold + rng.exponential(sigma * sigma / threshold)

        order = np.sort(touched[:n_touched])
        total = 0.0
        for k in order:
            layer = k // stride
            e_si = forced[k]
            if e_si == 0.0:
                e_sh = shower_e[k]
                if e_sh > 0.0:
                    shape = e_sh * sampling[layer] / smear
                    e_sh = rng.standard_gamma(shape) * e_sh / shape
                e_si = e_sh + track_e[k] + sigma * rng.standard_normal()
            shower_e[k] = 0.0
            track_e[k] = 0.0
            forced[k] = 0.0
            marked[k] = False
            if e_si <= threshold:
                continue
            e_rec = e_si * sampling[layer]
            o_event[n_out] = ev
            o_layer[n_out] = layer
            o_cell[n_out] = k - layer * stride
            o_e[n_out] = e_rec
            n_out += 1
            if layer < trig_layers:
                total += e_rec
        o_trig[ev] = total
    return n_out
