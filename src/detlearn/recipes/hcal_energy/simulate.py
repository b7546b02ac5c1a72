"""Built-in simulator of CMS HCAL HB/HE rechits in the layout of FACILE's flat ntuple.

One row of tree ``Events`` is one channel (a rechit): its coordinates, its calibration, the
8 time samples (TS, 25 ns each, sample of interest SOI = 3) of raw charge, pedestal and MAHI's
noise terms, the generated energy and two reconstructions, exactly FACILE's branches (see
:func:`write_channels`). Units: GeV, fC, ns. Every number is a field of :class:`HcalSimConfig`;
references ([S28] ...) are to ``physics.md`` §3.

The model, channel by channel (numpy over whole blocks of channels, compiled loops for the
pileup deposits and the readout; in seeded blocks):

1. **Channel**: |ieta| ~ U{1..29} with a random sign; depth ~ U{1..D(|ieta|)} with
   D = 4 (HB, |ieta| ≤ 16; 16 is HB depths 1–3 plus HE depth 4), 6 (HE 17, 26–28), 7 (18–25),
   3 (29); iphi ~ U{1..72}, odd only for |ieta| ≥ 21 (10° towers). See :data:`MAX_DEPTH`.
2. **Energy** ``genE``: with probability ``soft_fraction`` Exp(``soft_mean``), else
   log-uniform on [``energy_min``, ``energy_max``]. ``pt`` = genE / cosh(η), η the centre of
   the tower (:data:`ETA_EDGES`, CMSSW ``HcalTopology``): the transverse energy used to bin
   response and resolution.
3. **Light and gain**: yield Y = ``pe_per_gev`` × aging × LogNormal(0, ``light_spread``) pe/GeV,
   aging = 1 − ``aging_max`` × clip((|ieta| − 16)/13, 0, 1); SiPM gain
   G = ``fc_per_pe`` × LogNormal(0, ``sipm_gain_spread``) fC/pe. The channel's true calibration
   is g = 1/(Y G) GeV/fC (≈ 0.000625 nominal); the ``gain`` branch is g × LogNormal(0,
   ``calibration_error``).
4. **Photostatistics**: primary pe ~ Poisson(genE × Y × (1 − λ)), λ = ``crosstalk``; SiPM
   crosstalk (Borel branching) makes the recorded count n/(1 − λ) on average with variance
   nλ/(1 − λ)³, drawn as a Gaussian with these exact moments (so Y counts recorded pe,
   crosstalk included). Signal charge Q = pe × G.
5. **Pulse**: Q is spread over the TS by :func:`pulse_fractions`, a gamma-shaped rise plus an
   exponential tail fitted to the 2017 SiPM shape [S9], delayed by the time slew
   clip(a + b ln(Q/fC), 0, t_max) [S31] plus Gaussian jitter.
6. **Pileup**: PU ~ Poisson(μ), μ ~ U(``pu_mean_min``, ``pu_mean_max``). For every BX k in
   [``pu_bx_min``, ``pu_bx_max``] (0 is in time) the channel gets N_k ~ Poisson(PU × p_occ)
   deposits of Exp(``pu_energy_mean``), p_occ = ``pu_occupancy`` (1 + ``pu_occupancy_ieta``
   |ieta|) (× ``pu_depth1_factor`` at depth 1); charge E_k/g with the undelayed pulse shifted
   by 25k ns. genE is the in-time signal only: in-time pileup biases every reconstruction.
   ``PU`` is the number of interactions, the same for all BXs of a channel.
7. **Readout**: four capacitor pedestals ~ N(``pedestal``, ``pedestal_spread``), capacitor c
   serving TS c and c + 4 (``ped``); charge = ped + signal + pileup + N(0, ``pedestal_width``),
   quantized by a QIE11-like ADC (:func:`qie_quantize`): ``raw`` is the centre of the ADC bin.
8. **Noise terms as MAHI defines them** [S32]: ``inNoiseADC`` = bin width/√12;
   ``inNoisePhoto`` = √((raw − ped) × ``fc_per_pe``) where raw − ped > ``pedestal_width``, else 0.

:mod:`detlearn.recipes.hcal_energy.baselines` reconstructs ``energy`` (MAHI-lite) and ``eraw``
(M0) from these branches with this pulse shape, averaged over the jitter.

Example:
    >>> ch = generate_channels(1000, HcalSimConfig(), np.random.default_rng(0))
    >>> ch.raw.shape, bool((ch.raw >= 0).all())
    ((1000, 8), True)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import uproot

from detlearn._blocks import Joined, in_blocks, seeded_blocks
from detlearn._files import atomic_path
from detlearn._progress import progress
from detlearn.errors import DetlearnError
from detlearn.io.provenance import simulator_provenance, write_provenance
from detlearn.recipes.hcal_energy._kernels import pileup_rows, quantize_values, readout_rows
from detlearn.recipes.hcal_energy.baselines import mahi_lite
from detlearn.recipes.hcal_energy.config import (
    BLOCK,
    SAMPLES,
    TS_NS,
    Compression,
    HcalSimConfig,
    config_from_options,
)
from detlearn.recipes.hcal_energy.pulse import fractions_by_ts, pulse_fractions, time_slew

__all__ = [
    "BRANCHES",
    "ETA_EDGES",
    "MAX_DEPTH",
    "HcalChannels",
    "event_counts",
    "generate_channels",
    "qie_quantize",
    "simulate",
    "tower_eta",
    "write_channels",
]

#: Tower η edges of |ieta| = 1..29 (CMSSW HcalTopology; tower i spans [edge i-1, edge i]).
ETA_EDGES = np.array(
    [0.000, 0.087, 0.174, 0.261, 0.348, 0.435, 0.522, 0.609, 0.696, 0.783, 0.870, 0.957, 1.044,
     1.131, 1.218, 1.305, 1.392, 1.479, 1.566, 1.653, 1.740, 1.830, 1.930, 2.043, 2.172, 2.322,
     2.500, 2.650, 2.868, 3.000]
)  # fmt: skip
#: Number of depths of a channel at index |ieta| (index 0 unused).
MAX_DEPTH = np.array([0] + [4] * 16 + [6] + [7] * 8 + [6] * 3 + [3], dtype=np.int32)
#: Branches of tree ``Events`` (FACILE's ntuple), with their dtype and per-entry shape.
BRANCHES: dict[str, tuple[str, tuple[int, ...]]] = {
    "PU": ("i4", ()),
    "depth": ("i4", ()),
    "pt": ("f4", ()),
    "ieta": ("i4", ()),
    "iphi": ("i4", ()),
    "gain": ("f4", ()),
    "raw": ("f4", (SAMPLES,)),
    "ped": ("f4", (SAMPLES,)),
    "inNoiseADC": ("f4", (SAMPLES,)),
    "inNoisePhoto": ("f4", (SAMPLES,)),
    "genE": ("f4", ()),
    "energy": ("f4", ()),
    "eraw": ("f4", ()),
}
_LAST_IETA = 29
# cosh η at the centre of the tower of |ieta| = 1..29 (index |ieta| − 1): pt = genE / cosh η.
_COSH_ETA = np.cosh(0.5 * (ETA_EDGES[:-1] + ETA_EDGES[1:])).astype(np.float32)
_FIRST_ODD_IPHI_IETA = 21
_HE_AGING_START = 16
# QIE11-like ADC: 4 ranges of 64 codes; within a range, 4 sub-ranges of 16, 20, 21 and 7 codes
# with widths of 1, 2, 4, 8 range LSBs; each range's LSB is 8 times the previous one.
_QIE_SUBRANGE_WIDTHS = np.repeat([1, 2, 4, 8], [16, 20, 21, 7])
_QIE_RANGE_FACTOR = 8
# Entries per basket of the ROOT files (1 MB of ``raw``): uproot copies each basket a few times
# while writing, and buffers this small are reused by malloc rather than mapped afresh, page
# fault by page fault (a whole file per basket doubled the kernel time of writing).
_BASKET = 1 << 15
# uproot's compression of each (None: uncompressed).
_CODECS: dict[Compression, Any] = {
    "lz4": uproot.LZ4,
    "zstd": uproot.ZSTD,
    "zlib": uproot.ZLIB,
    "lzma": uproot.LZMA,
    "none": None,
}


@dataclass(frozen=True)
class HcalChannels:
    """Generated channels: the branches of the ntuple and the truth behind them.

    Integers are int32, reals float32 except ``signal_charge`` (float64).

    Attributes:
        ieta, iphi, depth: channel coordinates.
        pu: ``(n,)`` number of pileup interactions (``PU``).
        gen_energy: ``(n,)`` in-time signal energy [GeV] (``genE``).
        pt: ``(n,)`` genE / cosh(η of the tower) [GeV].
        gain: ``(n,)`` reported calibration [GeV/fC].
        raw, ped, noise_adc, noise_photo: ``(n, 8)`` [fC] (``raw``, ``ped``, ``inNoiseADC``,
            ``inNoisePhoto``).
        true_gain: ``(n,)`` the channel's true GeV/fC (1/(Y G)).
        signal_charge: ``(n,)`` total signal charge over all time [fC].
        time_shift: ``(n,)`` slew + jitter of the signal pulse [ns].
        pileup_energy: ``(n, n_bx)`` pileup energy per BX ``pu_bx_min..pu_bx_max`` [GeV].
    """

    ieta: np.ndarray
    iphi: np.ndarray
    depth: np.ndarray
    pu: np.ndarray
    gen_energy: np.ndarray
    pt: np.ndarray
    gain: np.ndarray
    raw: np.ndarray
    ped: np.ndarray
    noise_adc: np.ndarray
    noise_photo: np.ndarray
    true_gain: np.ndarray
    signal_charge: np.ndarray
    time_shift: np.ndarray
    pileup_energy: np.ndarray

    def __len__(self) -> int:
        return len(self.ieta)

    def branches(self) -> dict[str, np.ndarray]:
        """The ntuple's branches except the reconstructions (``energy``, ``eraw``)."""
        return {
            "PU": self.pu,
            "depth": self.depth,
            "pt": self.pt,
            "ieta": self.ieta,
            "iphi": self.iphi,
            "gain": self.gain,
            "raw": self.raw,
            "ped": self.ped,
            "inNoiseADC": self.noise_adc,
            "inNoisePhoto": self.noise_photo,
            "genE": self.gen_energy,
        }


def tower_eta(ieta: np.ndarray) -> np.ndarray:
    """|η| at the centre of the tower of each ``ieta`` (either sign).

    Example:
        >>> tower_eta(np.array([1, -29])).round(4).tolist()
        [0.0435, 2.934]
    """
    a = np.abs(np.asarray(ieta))
    return 0.5 * (ETA_EDGES[a - 1] + ETA_EDGES[a])


@functools.lru_cache(maxsize=8)
def _qie_tables(lsb: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ADC code of every LSB step of charge, and each code's bin centre and width/√12 [fC].

    Every bin edge is a whole number of lowest-range LSBs, so ``floor(q / lsb)`` indexes the
    code table exactly; a 115 kB code table and two 256-entry tables stay in cache, where
    per-step centre and noise tables would not.
    """
    widths = np.concatenate([_QIE_SUBRANGE_WIDTHS * _QIE_RANGE_FACTOR**r for r in range(4)])
    lower = np.cumsum(widths) - widths
    code = np.repeat(np.arange(len(widths), dtype=np.uint8), widths)
    centre = ((lower + widths / 2) * lsb).astype(np.float32)
    noise = (widths * lsb / np.sqrt(12.0)).astype(np.float32)
    return code, centre, noise


def qie_quantize(charge: np.ndarray, cfg: HcalSimConfig) -> tuple[np.ndarray, np.ndarray]:
    """QIE11-like digitization: the centre of each charge's ADC bin and MAHI's noiseADC [fC].

    256 codes: 4 ranges (LSB ``qie_lsb`` × 1, 8, 64, 512) of 64 codes each, their widths growing
    1, 2, 4, 8 LSBs over sub-ranges of 16, 20, 21, 7 codes; range 0 ends at 196 LSB = 608 fC,
    the top at 355 446 fC (saturation). noiseADC = bin width/√12. Both float32.

    Example:
        >>> raw, noise = qie_quantize(np.array([17.3, 1000.0]), HcalSimConfig())
        >>> raw.astype(float).round(2).tolist(), noise.astype(float).round(4).tolist()
        ([17.05, 992.0], [0.8949, 7.1591])
    """
    charge = np.asarray(charge, dtype=np.float64)
    raw, noise = np.empty((2, charge.size), np.float32)
    quantize_values(charge.ravel(), 1.0 / cfg.qie_lsb, *_qie_tables(cfg.qie_lsb), raw, noise)
    return raw.reshape(charge.shape), noise.reshape(charge.shape)


def _pileup_energy(
    pu: np.ndarray, occupancy: np.ndarray, cfg: HcalSimConfig, rng: np.random.Generator
) -> np.ndarray:
    """Pileup energy of every channel and BX ``pu_bx_min..pu_bx_max`` [GeV], ``(n, n_bx)`` float32.

    N_k ~ Poisson(PU p_occ) deposits of Exp(``pu_energy_mean``) per BX k, drawn compiled
    (:func:`._kernels.pileup_rows`), deposit by deposit: ~15 per channel at the default μ.
    """
    n_bx = cfg.pu_bx_max - cfg.pu_bx_min + 1
    out = np.empty((len(pu), n_bx), dtype=np.float32)
    pileup_rows(rng, n_bx * pu * occupancy, cfg.pu_energy_mean, out)
    return out


@functools.lru_cache(maxsize=8)
def _pileup_fractions(cfg: HcalSimConfig) -> np.ndarray:
    """Charge fractions per TS of a pileup pulse of each BX: ``(n_bx, 8)`` float32, read-only."""
    shift = TS_NS * np.arange(cfg.pu_bx_min, cfg.pu_bx_max + 1, dtype=np.float32)
    fractions = pulse_fractions(shift, cfg)
    fractions.flags.writeable = False
    return fractions


def _matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a @ b`` for a tall ``a``, in row chunks small enough for BLAS to stay on this thread.

    OpenBLAS runs a GEMM on all cores above m·n·k = 2¹⁸, and its idle workers then spin for a
    while, burning the cores that the generator's own threads need: one such call per block
    more than doubled the CPU time per channel.
    """
    rows = max(1, (1 << 17) // (a.shape[1] * b.shape[1]))
    out = np.empty((len(a), b.shape[1]), dtype=np.result_type(a, b))
    for i in range(0, len(a), rows):
        np.matmul(a[i : i + rows], b, out=out[i : i + rows])
    return out


def _channels(n: int, cfg: HcalSimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One block of ``n`` channels (steps 1-8 of the module docstring).

    Float32 throughout, the precision of the branches (random numbers included: numpy draws
    them faster, and float32 transcendentals are vectorized), except the photostatistics
    (float64 ``signal_charge``). The (n, 8) samples are worked on in place: fresh temporaries
    cost as much as the arithmetic. Random numbers are ~60% of the time: 17 normals, 3 Poisson
    draws and ~15 pileup deposits (an exponential and a BX each) per channel.
    """
    f4 = np.float32
    u = rng.random((5, n), dtype=f4)
    code = rng.integers(0, 2 * _LAST_IETA, n, dtype=np.int32)
    aieta = code // 2 + 1
    ieta = np.where(code % 2 == 0, aieta, -aieta)
    depth = (1 + u[0] * MAX_DEPTH[aieta]).astype(np.int32)
    odd = aieta >= _FIRST_ODD_IPHI_IETA
    iphi = np.where(odd, 1 + 2 * (u[1] * 36).astype(np.int32), 1 + (u[1] * 72).astype(np.int32))

    # 1 − u is exact in float32 and, unlike log1p, log has a vectorized float32 loop.
    log_lo, log_hi = math.log(cfg.energy_min), math.log(cfg.energy_max)
    energy = np.where(
        u[2] < cfg.soft_fraction,
        -cfg.soft_mean * np.log(1 - u[3]),
        np.exp(log_lo + (log_hi - log_lo) * u[3]),
    )

    z = rng.standard_normal((5, n), f4)
    aging = 1.0 - cfg.aging_max * np.clip(
        (aieta - _HE_AGING_START) * (1 / (_LAST_IETA - _HE_AGING_START)), 0, 1
    )
    light = (cfg.pe_per_gev * aging).astype(f4) * np.exp(cfg.light_spread * z[0])
    sipm_gain = cfg.fc_per_pe * np.exp(cfg.sipm_gain_spread * z[1])
    charge_per_gev = light * sipm_gain
    true_gain = 1 / charge_per_gev
    gain = true_gain * np.exp(cfg.calibration_error * z[2])

    lam = cfg.crosstalk
    primary = rng.poisson(energy * light * (1.0 - lam)).astype(np.float64)
    recorded = primary / (1 - lam) + np.sqrt(primary * lam / (1 - lam) ** 3) * z[3]
    signal = np.maximum(recorded, primary) * sipm_gain
    signal_f4 = signal.astype(f4)
    shift = time_slew(signal_f4, cfg)
    shift += cfg.jitter * z[4]

    mu = cfg.pu_mean_min + (cfg.pu_mean_max - cfg.pu_mean_min) * u[4]
    pu = rng.poisson(mu)
    occupancy = cfg.pu_occupancy * (1 + cfg.pu_occupancy_ieta * aieta)
    occupancy *= np.where(depth == 1, cfg.pu_depth1_factor, 1.0)
    pileup = _pileup_energy(pu, occupancy, cfg, rng)
    # Charge per TS: the pulses of the signal and of the pileup deposits in GeV, × Y G fC/GeV;
    # one TS at a time, as per-channel factors broadcast fast only over contiguous rows.
    charge = _matmul(pileup, _pileup_fractions(cfg))
    signal_energy = signal_f4 / charge_per_gev
    for ts, in_ts in enumerate(fractions_by_ts(shift, cfg)):
        in_ts *= signal_energy
        in_ts += charge[:, ts]
        np.multiply(in_ts, charge_per_gev, out=charge[:, ts])

    # Capacitor c serves TS c and c + 4. Real readouts start the rotation at any capacitor, but
    # for independent capacitor pedestals that only relabels them: the same distribution.
    ped, raw, noise_adc, noise_photo = readout = np.empty((4, n, SAMPLES), dtype=f4)
    readout_rows(
        rng,
        charge,
        cfg.pedestal,
        cfg.pedestal_spread,
        cfg.pedestal_width,
        cfg.fc_per_pe,
        1.0 / cfg.qie_lsb,
        *_qie_tables(cfg.qie_lsb),
        readout,
    )
    return {
        "ieta": ieta,
        "iphi": iphi,
        "depth": depth,
        "pu": pu.astype(np.int32),
        "gen_energy": energy,
        "pt": energy / _COSH_ETA[aieta - 1],
        "gain": gain,
        "raw": raw,
        "ped": ped,
        "noise_adc": noise_adc,
        "noise_photo": noise_photo,
        "true_gain": true_gain,
        "signal_charge": signal,
        "time_shift": shift,
        "pileup_energy": pileup,
    }


def generate_channels(
    n: int, cfg: HcalSimConfig, rng: np.random.Generator, threads: int | None = None
) -> HcalChannels:
    """Generate ``n`` channels in memory (no reconstruction, no file).

    Blocks of 32 768 channels, each with a generator spawned from ``rng``, run on ``threads``
    threads (default ``cfg.threads``); the result depends only on ``rng``'s state.

    Example:
        >>> ch = generate_channels(10, HcalSimConfig(), np.random.default_rng(3), threads=1)
        >>> ch.raw.shape, ch.raw.dtype.name
        ((10, 8), 'float32')
    """
    if n < 0:
        raise DetlearnError(f"hcal-energy simulate: number of channels must be >= 0 (got {n})")

    def work(rows: slice, child: np.random.Generator) -> dict[str, np.ndarray]:
        return _channels(rows.stop - rows.start, cfg, child)

    return HcalChannels(**in_blocks(n, BLOCK, work, threads or cfg.threads, rng))


def write_channels(
    branches: Mapping[str, np.ndarray],
    path: str | Path,
    compression: Compression = "lz4",
    level: int = 1,
    provenance: Mapping[str, Any] | None = None,
) -> Path:
    """Write tree ``Events`` with FACILE's branches (:data:`BRANCHES`) to ``path`` atomically,
    with the ``provenance`` record (:mod:`detlearn.io.provenance`) when given.

    ``raw``, ``ped``, ``inNoiseADC`` and ``inNoisePhoto`` are fixed-size ``float[8]`` branches:
    uproot reads them back as ``(n, 8)`` numpy arrays (awkward: ``n * 8 * float32``). The file
    is written to a temporary name in the same folder and renamed into place. ``compression``
    (lz4, zstd, zlib, lzma or none) at ``level`` is ROOT's per basket; ROOT ≥ 6.20 reads all.

    Raises:
        DetlearnError: when a branch of :data:`BRANCHES` is missing or an unknown one is given,
            or the compression is unknown.
    """
    if set(branches) != set(BRANCHES):
        missing = sorted(set(BRANCHES) - set(branches))
        extra = sorted(set(branches) - set(BRANCHES))
        raise DetlearnError(f"hcal-energy write: missing branches {missing}, unknown {extra}")
    if compression not in _CODECS:
        raise DetlearnError(
            f"hcal-energy write: unknown compression {compression!r}; choose from {list(_CODECS)}"
        )
    path = Path(path)
    columns = {
        name: np.ascontiguousarray(branches[name], dtype=dtype)
        for name, (dtype, _) in BRANCHES.items()
    }
    codec = _CODECS[compression]
    with (
        atomic_path(path) as tmp,
        uproot.recreate(tmp, compression=codec(level) if codec else None) as f,
    ):
        f.mktree("Events", {name: np.dtype((dt, shape)) for name, (dt, shape) in BRANCHES.items()})
        tree = f["Events"]
        for start in range(0, len(columns["PU"]), _BASKET):  # one basket per branch each
            tree.extend({k: v[start : start + _BASKET] for k, v in columns.items()})
        if provenance is not None:
            write_provenance(f, provenance)
    return path


def event_counts(events: int, cfg: HcalSimConfig) -> tuple[int, int]:
    """The channels :func:`simulate` writes in all (``events``) and holds in memory at once
    (three files': one written, one filled, the next queued).

    Example:
        >>> event_counts(1_000_000, HcalSimConfig(channels_per_file=200_000))
        (1000000, 600000)
    """
    return events, min(events, 3 * cfg.channels_per_file)


def simulate(
    out_dir: str | Path, events: int, seed: int, options: Mapping[str, Any] | None = None
) -> list[Path]:
    """The recipe entry point: ``events`` channels as ``hcal_{i:04d}.root`` files.

    Each file holds ``channels_per_file`` channels (the last one the rest), with ``energy``
    reconstructed by :func:`~.baselines.mahi_lite` and ``eraw`` by :func:`~.baselines.m0` (the
    fit's starting point). File i is written by a second thread while file i + 1 is generated.

    Args:
        out_dir: folder for the files (created).
        events: number of channels (rows) in total.
        seed: master seed; file i is generated from ``SeedSequence(seed).spawn(n_files)[i]``.
        options: :class:`HcalSimConfig` fields (the recipe's ``simulate`` section).

    Returns:
        The files written, in order. A rich progress bar is shown when there are several.

    Raises:
        DetlearnError: an unknown option (naming the nearest valid one), an invalid value, or a
            negative ``events``.

    Example:
        >>> simulate("sim", 500_000, seed=1)   # doctest: +SKIP
        [PosixPath('sim/hcal_0000.root'), PosixPath('sim/hcal_0001.root'), ...]
    """
    cfg = config_from_options(options)
    if events < 0:
        raise DetlearnError(f"hcal-energy simulate: number of channels must be >= 0 (got {events})")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    per = cfg.channels_per_file
    sizes = [min(per, events - s) for s in range(0, events, per)]
    seeds = np.random.SeedSequence(seed).spawn(len(sizes))

    def fill(out: Joined, rows: slice, rng: np.random.Generator) -> None:
        # generate_channels and mahi_lite on one of their blocks: the same channels and fits.
        ch = HcalChannels(**_channels(rows.stop - rows.start, cfg, rng))
        fit = mahi_lite(ch.raw, ch.ped, ch.gain, ch.noise_adc, cfg, threads=1)
        out.put(rows, {**ch.branches(), "energy": fit.energy, "eraw": fit.m0})

    def start(i: int) -> tuple[Joined, list[Future[None]]]:
        out = Joined(sizes[i])
        blocks = seeded_blocks(sizes[i], BLOCK, np.random.default_rng(seeds[i]))
        return out, [pool.submit(fill, out, *block) for block in blocks]

    def write(i: int, branches: dict[str, np.ndarray]) -> Path:
        path = out_dir / f"hcal_{i:04d}.root"
        record = simulator_provenance("hcal-energy", cfg, seed, i)
        return write_channels(branches, path, cfg.compression, cfg.compression_level, record)

    # The blocks of file i + 1 queue behind those of file i, so the threads never wait for a
    # file to be complete; file i is written by another thread meanwhile.
    written: list[Future[Path]] = []
    with (
        ThreadPoolExecutor(cfg.threads) as pool,
        ThreadPoolExecutor(1) as writer,
        progress(len(sizes), "simulating HCAL channels", len(sizes) > 1) as advance,
    ):
        pending = start(0) if sizes else None
        for i in range(len(sizes)):
            out, filling = pending
            pending = start(i + 1) if i + 1 < len(sizes) else None
            for done in filling:
                done.result()
            if written:
                written[-1].result()  # at most three files' channels in memory
            written.append(writer.submit(write, i, out.arrays))
            advance()
    return [f.result() for f in written]
