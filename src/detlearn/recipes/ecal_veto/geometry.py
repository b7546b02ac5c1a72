"""The LDMX ECal as the built-in simulator sees it: ldmx-det-v14 layers, hexagonal cells, weights.

Numbers from physics.md §2.1, with its source marks: [S17] ``LDMX-Software/ldmx-sw``
(``Detectors/data/ldmx-det-v14/constants.gdml``, ``Detectors/util/ecal_layer_stack.py``,
``DetDescr/python/ecal_geometry.py``, ``Ecal/python/digi.py``,
``SingleElectronShowerFeatures.cxx``); [S*] PDG material tables; [D] derived there from sourced
numbers; [A] assumed here.

- **Stack**: 34 silicon layers (17 bilayers) at :data:`LAYER_Z` behind the ECal front at
  z = 240 mm [S17]; :data:`X0_IN_FRONT` is the cumulative depth in radiation lengths in front
  of each layer [D]. The simulator measures every depth in these X₀ (so material other than
  tungsten counts), and converts depth to z by interpolating between the layers.
- **Readout**: a layer reads the energy deposited in its 0.5 mm of silicon. A shower's energy
  between the midpoints of neighbouring layers' depths (the absorber "assigned" to a layer, as
  ldmx-sw's layer weights L assign it; the last layer gets only the half in front, matching its
  half-size weight) is seen as E_Si = E / (1 + L / E_MIP), E_MIP = 0.130 MeV, and reconstructed
  as E_rec = (1 + L / E_MIP) E_Si (ldmx-sw's formula with C = 1) [S17].
- **Cells**: hexagons of centre-to-corner radius r_c = 170 / 35.3 mm = 4.82 mm [S17, D] on one
  flat-topped lattice per layer (axial coordinates and cube rounding as physics.md §2.2),
  shifted by one r_c in x on odd layers [S17]. The per-module lattice offsets of the real
  hexaboards are not modelled [A].
- **Flower**: 7 hexagonal modules of centre-to-flat radius 85 mm with 1.5 mm gaps, the centre
  one at (0, 0), six around it at 2·85 + 1.5 mm; they are oriented so that the flower spans
  ECal_dx = 6·85 + 2·1.5 = 513 mm in x and ECal_dy = 85·10/√3 + √3·1.5 = 493 mm in y [S17]
  (neighbours at 0°, 60°, …; physics.md's "30° + k·60°" would swap dx and dy). A cell belongs
  to the readout when its centre lies inside a module; deposits elsewhere are lost.

Example:
    >>> q, r = hex_cell(np.array([0.0, 10.0]), np.array([0.0, 0.0]), np.array([0, 1]))
    >>> cell_center(q, r, np.array([0, 1]))[0].round(2).tolist()
    [0.0, 12.04]
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

__all__ = [
    "CELL_RADIUS",
    "DEPTH_EDGES",
    "ECAL_FRONT_Z",
    "LAYER_SHIFT",
    "LAYER_WEIGHTS",
    "LAYER_Z",
    "MIP_SI_MEV",
    "MODULE_CENTERS",
    "MODULE_GAP",
    "MODULE_RADIUS",
    "N_LAYERS",
    "R68",
    "SAMPLING_FACTOR",
    "SI_THICKNESS",
    "TARGET_THICKNESS_X0",
    "W_CRITICAL_ENERGY",
    "W_LAMBDA_I",
    "W_MOLIERE_RADIUS",
    "W_X0",
    "X0_IN_FRONT",
    "CellGrid",
    "cell_center",
    "cell_grid",
    "contained",
    "depth_to_z",
    "hex_cell",
    "in_flower",
]

#: z of the ECal front (its parent volume) [mm] [S17].
ECAL_FRONT_Z = 240.0
#: Silicon layers in the stack [S17].
N_LAYERS = 34
_LAYER_Z_REL = (
    7.582, 16.062, 33.226, 43.206, 60.370, 71.350, 90.014, 101.594, 120.258, 131.838, 150.502,
    162.082, 180.746, 192.326, 210.990, 222.570, 241.234, 252.814, 271.478, 283.058, 301.722,
    313.302, 331.966, 343.546, 365.710, 380.690, 402.854, 417.834, 439.998, 454.978, 477.142,
    492.122, 514.286, 529.266,
)  # fmt: skip
#: z of each silicon layer [mm]: 240 mm + the v14 ``ecal_geometry.py`` offsets [S17].
LAYER_Z = ECAL_FRONT_Z + np.array(_LAYER_Z_REL)
#: Cumulative depth in front of each silicon layer [X₀] [D, physics.md §2.1].
X0_IN_FRONT = np.array([
    0.03, 0.07, 0.41, 1.02, 1.65, 2.55, 3.60, 4.67, 5.72, 6.79, 7.84, 8.91, 9.96, 11.03, 12.08,
    13.15, 14.20, 15.27, 16.32, 17.39, 18.45, 19.52, 20.57, 21.64, 23.69, 25.73, 27.78, 29.82,
    31.87, 33.91, 35.96, 38.00, 40.05, 42.09,
])  # fmt: skip
#: MeV a MIP loses in the absorber assigned to each layer, v14 [S17 docs, ``digi.py``].
LAYER_WEIGHTS = np.array(
    [2.312, 4.312, 6.522, 7.490, 8.595, 10.253] + [10.915] * 17 + [14.783] + [18.539] * 9
    + [9.938]
)  # fmt: skip
#: Most probable energy of a MIP in 0.5 mm of silicon [MeV] [S17].
MIP_SI_MEV = 0.130
#: Silicon sensor thickness, v14 ``Si_dz`` [mm] [S17].
SI_THICKNESS = 0.5
#: E_rec / E_Si = 1 + L / E_MIP per layer.
SAMPLING_FACTOR = 1.0 + LAYER_WEIGHTS / MIP_SI_MEV
#: Layer l reads the shower energy deposited at depths [DEPTH_EDGES[l], DEPTH_EDGES[l + 1])
#: [X₀]: from the front, between depth midpoints, up to the last layer.
DEPTH_EDGES = np.concatenate([[0.0], 0.5 * (X0_IN_FRONT[:-1] + X0_IN_FRONT[1:]), X0_IN_FRONT[-1:]])
#: 68 % containment radius of single-electron showers (p < 500 MeV, θ < 10°) around the
#: projected track, per layer [mm] [S17 ``SingleElectronShowerFeatures.cxx``].
R68 = np.array([
    4.0, 4.1, 4.4, 4.7, 5.9, 6.6, 8.7, 10.1, 13.1, 14.9, 18.2, 19.9, 23.0, 25.1, 28.3, 29.5,
    34.0, 35.0, 38.5, 39.4, 42.6, 45.4, 48.6, 48.1, 53.2, 58.9, 66.3, 72.9, 86.0, 89.2, 93.3,
    96.6, 100.7, 104.0,
])  # fmt: skip

#: Cell centre-to-corner radius r_c = 170 mm / 35.3 [mm] [S17, D].
CELL_RADIUS = 170.0 / 35.3
#: x shift of the cell lattice on odd layers: one r_c [mm] [S17].
LAYER_SHIFT = CELL_RADIUS
#: Module centre-to-flat radius [mm] [S17].
MODULE_RADIUS = 85.0
#: Gap between neighbouring modules [mm] [S17].
MODULE_GAP = 1.5
_PITCH = 2 * MODULE_RADIUS + MODULE_GAP
#: The 7 module centres (x, y) [mm]: the middle one, then six at 0°, 60°, …, 300°.
MODULE_CENTERS = np.array(
    [[0.0, 0.0]]
    + [[_PITCH * math.cos(k * math.pi / 3), _PITCH * math.sin(k * math.pi / 3)] for k in range(6)]
)
# Normals of a module's three pairs of flats (the flats face ±x, so the flower is 513 mm wide).
_MODULE_NORMALS = np.array(
    [[math.cos(a), math.sin(a)] for a in (0.0, math.pi / 3, 2 * math.pi / 3)]
)

#: Tungsten target thickness, 0.3504 mm [X₀] [S17].
TARGET_THICKNESS_X0 = 0.1
#: Tungsten radiation length [mm] [S*].
W_X0 = 3.50
#: Tungsten nuclear interaction length [mm] [S*].
W_LAMBDA_I = 99.4
#: Tungsten Molière radius [mm] [S*].
W_MOLIERE_RADIUS = 9.33
#: Tungsten critical energy for electrons [MeV] [S*].
W_CRITICAL_ENERGY = 7.97


def depth_to_z(depth: np.ndarray) -> np.ndarray:
    """z [mm] at a depth [X₀] in the stack: linear between layers, the front before the first.

    Example:
        >>> depth_to_z(np.array([0.0, 0.03, 42.09])).round(3).tolist()
        [240.0, 247.582, 769.266]
    """
    return np.interp(depth, np.r_[0.0, X0_IN_FRONT], np.r_[ECAL_FRONT_Z, LAYER_Z])


def hex_cell(x: np.ndarray, y: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Axial coordinates (q, r) of the hexagonal cell holding (x, y) [mm] in ``layer``.

    Flat-topped cells of radius :data:`CELL_RADIUS`: q = (2/3 x) / r_c,
    r = (−x/3 + √3/3 y) / r_c, cube-rounded; odd layers' lattice is shifted by
    :data:`LAYER_SHIFT` in x.
    """
    x = np.asarray(x, dtype=np.float64) - LAYER_SHIFT * (np.asarray(layer) % 2)
    qf = (2.0 / 3.0) * x / CELL_RADIUS
    rf = (-x / 3.0 + math.sqrt(3.0) / 3.0 * np.asarray(y, dtype=np.float64)) / CELL_RADIUS
    sf = -qf - rf
    q, r, s = np.rint(qf), np.rint(rf), np.rint(sf)
    dq, dr, ds = np.abs(q - qf), np.abs(r - rf), np.abs(s - sf)
    fix_q = (dq > dr) & (dq > ds)
    fix_r = ~fix_q & (dr > ds)
    q = np.where(fix_q, -r - s, q)
    r = np.where(fix_r, -q - s, r)
    return q.astype(np.int64), r.astype(np.int64)


def cell_center(q: np.ndarray, r: np.ndarray, layer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) [mm] of cell (q, r) in ``layer`` (the inverse of :func:`hex_cell`)."""
    x = CELL_RADIUS * 1.5 * np.asarray(q) + LAYER_SHIFT * (np.asarray(layer) % 2)
    y = CELL_RADIUS * math.sqrt(3.0) * (np.asarray(r) + 0.5 * np.asarray(q))
    return x, y


def in_flower(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Whether (x, y) [mm] lies inside one of the 7 modules (not in a gap, not outside).

    Example:
        >>> x, y = np.array([0.0, 85.5, 256.0, 85.75, 0.0]), np.array([0.0, 0.0, 0.0, 240.0, 240.0])
        >>> in_flower(x, y).tolist()
        [True, False, True, True, False]
    """
    p = np.stack([np.asarray(x, np.float64), np.asarray(y, np.float64)], axis=-1)
    rel = p[..., None, :] - MODULE_CENTERS
    flat_distance = np.abs(rel @ _MODULE_NORMALS.T).max(axis=-1)
    return (flat_distance <= MODULE_RADIUS).any(axis=-1)


def contained(theta: np.ndarray, phi: np.ndarray, depth: float) -> np.ndarray:
    """Whether a particle from the target (the origin) at polar angle ``theta`` and azimuth
    ``phi`` [rad], on a straight line, is inside the flower both at the ECal front and at
    ``depth`` [X₀] in the stack (a module gap at either plane counts as outside).

    Example:
        >>> contained(np.array([0.1, 0.6, 0.75]), np.zeros(3), 5.0).tolist()
        [True, True, False]
    """
    tan = np.tan(np.minimum(np.asarray(theta, np.float64), 1.5))
    cos, sin = np.cos(phi), np.sin(phi)
    inside = np.ones(tan.shape, dtype=bool)
    for z in (ECAL_FRONT_Z, float(depth_to_z(np.float64(depth)))):
        inside &= in_flower(z * tan * cos, z * tan * sin)
    return inside


@dataclass(frozen=True)
class CellGrid:
    """Dense lookup tables of the readout cells, per layer parity (even, odd lattice).

    Attributes:
        q0, r0: smallest axial q and r covered by ``index``.
        index: ``[2, nq, nr]`` int32 compact cell id of axial (q0 + i, r0 + j); −1 where the
            cell's centre is outside the flower.
        x, y: ``[2, n_max]`` centre of each compact id [mm] (NaN past ``n_cells``).
        n_cells: cells per layer of each parity.
    """

    q0: int
    r0: int
    index: np.ndarray
    x: np.ndarray
    y: np.ndarray
    n_cells: np.ndarray

    @property
    def n_max(self) -> int:
        """The larger of the two parities' cell counts (the stride of a layer's cells)."""
        return int(self.n_cells.max())


@functools.lru_cache(maxsize=1)
def cell_grid() -> CellGrid:
    """The readout cells of both layer parities (about 2,900 per layer).

    Example:
        >>> grid = cell_grid()
        >>> 2800 < int(grid.n_cells[0]) < 3000
        True
    """
    half_x = 1.5 * _PITCH + MODULE_RADIUS + LAYER_SHIFT
    q_max = math.ceil(half_x / (1.5 * CELL_RADIUS)) + 1
    r_max = math.ceil((half_x / 3 + half_x / math.sqrt(3)) / CELL_RADIUS) + 1
    q, r = np.meshgrid(np.arange(-q_max, q_max + 1), np.arange(-r_max, r_max + 1), indexing="ij")
    index = np.full((2, *q.shape), -1, dtype=np.int32)
    centres = []
    for parity in (0, 1):
        x, y = cell_center(q, r, parity)
        inside = in_flower(x, y)
        index[parity][inside] = np.arange(int(inside.sum()), dtype=np.int32)
        centres.append((x[inside], y[inside]))
    n_cells = np.array([len(x) for x, _ in centres])
    xs = np.full((2, n_cells.max()), np.nan)
    ys = np.full((2, n_cells.max()), np.nan)
    for parity, (x, y) in enumerate(centres):
        xs[parity, : len(x)], ys[parity, : len(y)] = x, y
    return CellGrid(-q_max, -r_max, index, xs, ys, n_cells)
