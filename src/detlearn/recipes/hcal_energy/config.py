"""The HCAL channel simulator's configuration: every number, with its source and unit.

References ([S28] ...) are to ``physics.md`` §3.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from detlearn._threads import usable_cpus
from detlearn.config import validate_options

__all__ = [
    "BLOCK",
    "SAMPLES",
    "SOI",
    "TS_NS",
    "Compression",
    "HcalSimConfig",
    "config_from_options",
]

#: Channels per independently seeded block: the unit of threading; fixed, so results depend
#: only on the seed, never on the number of threads.
BLOCK = 1 << 15
#: Time samples per channel, the sample of interest, and the sample length [ns].
SAMPLES = 8
SOI = 3
TS_NS = 25.0
#: ROOT basket compressions of :func:`write_channels` (the ``compression`` option).
Compression = Literal["lz4", "zstd", "zlib", "lzma", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HcalSimConfig(_Strict):
    """Every number of the HCAL channel simulator (defaults: Phase-1 SiPM + QIE11 [S28]).

    Example:
        >>> HcalSimConfig(pu_mean_max=0.0).pu_mean_max
        0.0
    """

    # Output
    channels_per_file: int = Field(200_000, gt=0, description="channels (rows) per ROOT file")
    compression: Compression = Field(
        "lz4", description="ROOT basket compression (lz4: fastest; zstd: ~25% smaller, slower)"
    )
    compression_level: int = Field(1, ge=1, le=9, description="compression level (1: fastest)")
    threads: int = Field(
        default_factory=usable_cpus,
        gt=0,
        description="threads generating and fitting channels (default: the usable CPUs; "
        "results do not depend)",
    )
    # Energy spectrum
    energy_min: float = Field(0.2, gt=0, description="lower end of the log-uniform genE [GeV]")
    energy_max: float = Field(200.0, gt=0, description="upper end of the log-uniform genE [GeV]")
    soft_fraction: float = Field(
        0.3, ge=0, le=1, description="fraction of channels with genE ~ Exp(soft_mean)"
    )
    soft_mean: float = Field(2.0, gt=0, description="mean of the soft genE component [GeV]")
    # Light yield and calibration
    pe_per_gev: float = Field(
        40.0, gt=0, description="recorded photoelectrons per GeV (crosstalk included) [pe/GeV]"
    )
    fc_per_pe: float = Field(40.0, gt=0, description="SiPM charge per photoelectron [fC/pe]")
    crosstalk: float = Field(0.17, ge=0, lt=1, description="SiPM crosstalk probability λ")
    light_spread: float = Field(
        0.05, ge=0, description="log-normal σ of the channel light yield (median 1)"
    )
    sipm_gain_spread: float = Field(
        0.1, ge=0, description="log-normal σ of the channel SiPM gain in fC/pe (median 1)"
    )
    aging_max: float = Field(
        0.4, ge=0, lt=1, description="light loss at |ieta| = 29, linear from 0 at |ieta| = 16"
    )
    calibration_error: float = Field(
        0.02, ge=0, description="log-normal σ of the reported gain around the true GeV/fC"
    )
    # Pulse shape and timing
    phase: float = Field(
        10.0, description="pulse time at the start of the SOI window (2017 SiPM table) [ns]"
    )
    pulse_start: float = Field(9.8, description="pulse onset in pulse time [ns]")
    pulse_rise: float = Field(
        5.2, ge=1, description="τ of the (t/τ)² exp(-t/τ) main component [ns]"
    )
    pulse_tail_fraction: float = Field(
        0.327, ge=0, le=1, description="charge fraction in the exponential tail"
    )
    pulse_tail_tau: float = Field(39.5, ge=1, description="decay time of the tail [ns]")
    slew_intercept: float = Field(24.0, description="time slew a in a + b ln(Q/fC) [ns]")
    slew_slope: float = Field(-3.18, description="time slew b in a + b ln(Q/fC) [ns]")
    slew_max: float = Field(12.0, ge=0, description="time slew cap t_max (slew in [0, t_max]) [ns]")
    jitter: float = Field(1.5, ge=0, description="Gaussian time jitter σ of the signal [ns]")
    # Readout
    pedestal: float = Field(17.3, ge=0, description="mean pedestal per TS [fC]")
    pedestal_spread: float = Field(
        0.2, ge=0, description="σ of the 4 capacitor pedestals around the mean [fC]"
    )
    pedestal_width: float = Field(1.5, gt=0, description="electronic noise σ per TS [fC]")
    qie_lsb: float = Field(3.1, gt=0, description="QIE11 least significant bit, lowest range [fC]")
    # Pileup
    pu_mean_min: float = Field(0.0, ge=0, description="lower end of the per-channel mean PU μ")
    pu_mean_max: float = Field(100.0, ge=0, description="upper end of μ; PU ~ Poisson(μ)")
    pu_occupancy: float = Field(
        0.01, ge=0, description="pileup deposits per interaction and BX at |ieta| = 0"
    )
    pu_occupancy_ieta: float = Field(
        0.15, ge=0, description="relative growth of the occupancy per unit |ieta|"
    )
    pu_depth1_factor: float = Field(1.5, ge=0, description="occupancy factor of depth 1")
    pu_energy_mean: float = Field(0.4, gt=0, description="mean energy of a pileup deposit [GeV]")
    pu_bx_min: int = Field(-4, le=0, description="earliest pileup bunch crossing (SOI = 0)")
    pu_bx_max: int = Field(
        4, ge=0, description="latest pileup bunch crossing (SOI = 0; BX 5 reaches TS 7 with 0.2%)"
    )

    @model_validator(mode="after")
    def _ordered(self) -> HcalSimConfig:
        if self.energy_min >= self.energy_max:
            raise ValueError(f"energy_min {self.energy_min} must be < energy_max {self.energy_max}")
        if self.pu_mean_min > self.pu_mean_max:
            raise ValueError(
                f"pu_mean_min {self.pu_mean_min} must be <= pu_mean_max {self.pu_mean_max}"
            )
        return self

    @property
    def nominal_gain(self) -> float:
        """GeV per fC of a channel with median light yield and SiPM gain: 1/(Y G)."""
        return 1.0 / (self.pe_per_gev * self.fc_per_pe)


def config_from_options(options: Mapping[str, Any] | None) -> HcalSimConfig:
    """Validate the recipe's ``simulate`` options; a bad key names itself and the nearest one.

    Example:
        >>> config_from_options({"pu_mean_maz": 50})
        Traceback (most recent call last):
        ...
        detlearn.errors.DetlearnError: hcal-energy simulate: unknown option 'pu_mean_maz'; did you mean 'pu_mean_max'?
    """  # noqa: E501
    return validate_options(HcalSimConfig, options, "hcal-energy simulate")
