"""OpenMM's tabulated functions (``Continuous1/2/3DFunction``, ``Discrete1/2/3DFunction``) as batched torch."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ...errors import UnsupportedForceError

__all__ = [
    "SUPPORTED_TABULATED_FUNCTIONS",
    "ContinuousFunction",
    "DiscreteFunction",
    "TabulatedFunction",
    "tabulated_function",
    "tabulated_functions",
]

#: OpenMM tabulated-function classes with a torch version (periodic variants included).
SUPPORTED_TABULATED_FUNCTIONS = (
    "Continuous1DFunction",
    "Continuous2DFunction",
    "Continuous3DFunction",
    "Discrete1DFunction",
    "Discrete2DFunction",
    "Discrete3DFunction",
)


class TabulatedFunction:
    """A function of ``n_args`` scalars given by a table; ``f(*args)`` evaluates it elementwise with broadcasting.

    Tables are float64 tensors built once; each call casts them to the dtype and device of its arguments (cached).
    """

    n_args: int

    def __init__(self, name: str, tables: dict[str, Tensor]) -> None:
        self.name = name
        self._tables = tables
        self._cast: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    def tables(self, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """The tables in ``dtype`` on ``device``."""
        key = (dtype, device)
        if key not in self._cast:
            self._cast[key] = {
                k: v.to(device=device, dtype=dtype if v.is_floating_point() else v.dtype)
                for k, v in self._tables.items()
            }
        return self._cast[key]

    def __call__(self, *args: Tensor | float) -> Tensor:
        if len(args) != self.n_args:
            raise TypeError(f"{self.name} takes {self.n_args} arguments, got {len(args)}")
        like = next((a for a in args if isinstance(a, Tensor)), None)
        dtype = like.dtype if like is not None and like.is_floating_point() else torch.float64
        device = like.device if like is not None else torch.device("cpu")
        tensors = [a if isinstance(a, Tensor) else torch.tensor(float(a), dtype=dtype, device=device) for a in args]
        return self._evaluate(torch.broadcast_tensors(*tensors), self.tables(dtype, device))

    def _evaluate(self, args: Sequence[Tensor], tables: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, n_args={self.n_args})"


class DiscreteFunction(TabulatedFunction):
    """``Discrete1/2/3DFunction``: the table entry at the rounded arguments (C ``round``: half away from zero),
    clamped to the table as OpenMM's Reference platform does; its derivative is zero.

    values: x fastest, i.e. entry ``values[i + xsize*(j + ysize*k)]``; sizes: (xsize,), (xsize, ysize) or
    (xsize, ysize, zsize).
    """

    def __init__(self, name: str, values: Sequence[float], sizes: Sequence[int]) -> None:
        sizes = tuple(int(s) for s in sizes)
        if int(np.prod(sizes)) != len(values) or min(sizes) < 1:
            raise ValueError(f"{name}: {len(values)} values do not fill a table of sizes {sizes}")
        super().__init__(name, {"values": torch.as_tensor(np.asarray(values, dtype=np.float64))})
        self.n_args = len(sizes)
        self.sizes = sizes

    def _evaluate(self, args: Sequence[Tensor], tables: dict[str, Tensor]) -> Tensor:
        flat = None
        stride = 1
        for arg, size in zip(args, self.sizes):
            a = arg.detach()
            rounded = torch.where(a >= 0, torch.floor(a + 0.5), torch.ceil(a - 0.5))
            index = rounded.clamp(0, size - 1).to(torch.long) * stride
            flat = index if flat is None else flat + index
            stride *= size
        return tables["values"][flat]


class ContinuousFunction(TabulatedFunction):
    """``Continuous1/2/3DFunction``: OpenMM's natural (or periodic) cubic spline on a uniform grid, zero outside
    ``[min, max]`` along any axis (periodic functions wrap their arguments into the range first).

    1D: the cubic spline through the points, evaluated as OpenMM's ``SplineFitter::evaluateSpline``. 2D and 3D:
    the bicubic / tricubic Hermite patch whose corner values and first / mixed derivatives come from 1D splines
    along each axis, the same patches as OpenMM's ``create2DSpline``/``create3DSpline`` coefficients.
    values: x fastest (``values[i + xsize*(j + ysize*k)]``); sizes, lower and upper: one entry per axis.
    """

    def __init__(
        self,
        name: str,
        values: Sequence[float],
        sizes: Sequence[int],
        lower: Sequence[float],
        upper: Sequence[float],
        periodic: bool = False,
    ) -> None:
        sizes = tuple(int(s) for s in sizes)
        minimum_points = 3 if periodic else 2
        if min(sizes) < minimum_points:
            raise ValueError(
                f"{name}: a {'periodic' if periodic else 'natural'} spline needs >= {minimum_points} points"
            )
        if int(np.prod(sizes)) != len(values):
            raise ValueError(f"{name}: {len(values)} values do not fill a table of sizes {sizes}")
        grid = np.asarray(values, dtype=np.float64).reshape(sizes[::-1]).T  # grid[i, j, k] = values[i + xsize*(j...)]
        knots = [np.array([lo + i * (hi - lo) / (n - 1) for i in range(n)]) for n, lo, hi in zip(sizes, lower, upper)]
        tables: dict[str, Tensor] = {f"knots{d}": torch.as_tensor(k) for d, k in enumerate(knots)}
        if len(sizes) == 1:
            tables["values"] = torch.as_tensor(grid)
            tables["second"] = torch.as_tensor(_spline_second_derivatives(knots[0], grid, periodic))
        else:
            for subset in itertools.product((False, True), repeat=len(sizes)):
                table = grid
                for axis, differentiate in enumerate(subset):
                    if differentiate:
                        table = _differentiate_along(table, knots[axis], axis, periodic)
                tables["d" + "".join("1" if s else "0" for s in subset)] = torch.as_tensor(np.ascontiguousarray(table))
        super().__init__(name, tables)
        self.n_args = len(sizes)
        self.sizes = sizes
        self.lower = tuple(float(v) for v in lower)
        self.upper = tuple(float(v) for v in upper)
        self.periodic = bool(periodic)

    def _evaluate(self, args: Sequence[Tensor], tables: dict[str, Tensor]) -> Tensor:
        inside = None
        cells, fractions, widths = [], [], []
        for axis, (t, lo, hi) in enumerate(zip(args, self.lower, self.upper)):
            if self.periodic:
                s = (t - lo) / (hi - lo)
                t = lo + (hi - lo) * (s - torch.floor(s))
            ok = (t >= lo) & (t <= hi)
            inside = ok if inside is None else inside & ok
            knots = tables[f"knots{axis}"]
            t = torch.where(ok, t, torch.full_like(t, lo))
            cell = torch.searchsorted(knots, t.detach().contiguous(), right=True) - 1
            cell = cell.clamp(0, self.sizes[axis] - 2)
            x_lower, x_upper = knots[cell], knots[cell + 1]
            cells.append(cell)
            widths.append(x_upper - x_lower)
            fractions.append((t - x_lower) / (x_upper - x_lower))
        if self.n_args == 1:
            value = self._cubic(cells[0], fractions[0], widths[0], tables)
        else:
            value = self._hermite(cells, fractions, widths, tables)
        return torch.where(inside, value, torch.zeros((), dtype=value.dtype, device=value.device))

    @staticmethod
    def _cubic(cell: Tensor, b: Tensor, dx: Tensor, tables: dict[str, Tensor]) -> Tensor:
        y, second = tables["values"], tables["second"]
        a = 1.0 - b
        return (
            a * y[cell] + b * y[cell + 1] + ((a**3 - a) * second[cell] + (b**3 - b) * second[cell + 1]) * dx * dx / 6.0
        )

    def _hermite(self, cells: list[Tensor], fractions: list[Tensor], widths: list[Tensor], tables: dict) -> Tensor:
        # Cubic Hermite basis on [0, 1]: value weights h0 (at 0), h1 (at 1); slope weights g0, g1.
        basis = []
        for t, width in zip(fractions, widths):
            t2, t3 = t * t, t * t * t
            h = (1.0 - 3.0 * t2 + 2.0 * t3, 3.0 * t2 - 2.0 * t3)
            g = ((t - 2.0 * t2 + t3) * width, (t3 - t2) * width)
            basis.append((h, g))
        strides = [int(np.prod(self.sizes[axis + 1 :])) for axis in range(self.n_args)]  # C order of the grid
        value = None
        for corner in itertools.product((0, 1), repeat=self.n_args):
            flat = sum((cell + c) * stride for cell, c, stride in zip(cells, corner, strides))
            for subset in itertools.product((False, True), repeat=self.n_args):
                table = tables["d" + "".join("1" if s else "0" for s in subset)].reshape(-1)
                term = table[flat]
                for axis, (c, differentiate) in enumerate(zip(corner, subset)):
                    h, g = basis[axis]
                    term = term * (g[c] if differentiate else h[c])
                value = term if value is None else value + term
        return value


def _solve_tridiagonal(a: np.ndarray, b: np.ndarray, c: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """OpenMM's ``SplineFitter::solveTridiagonalMatrix`` (Thomas algorithm); rhs may carry trailing columns."""
    n = len(a)
    sol = np.array(rhs, dtype=np.float64)
    gamma = np.zeros(n)
    sol[0] = rhs[0] / b[0]
    beta = b[0]
    for i in range(1, n):
        gamma[i] = c[i - 1] / beta
        beta = b[i] - a[i] * gamma[i]
        sol[i] = (rhs[i] - a[i] * sol[i - 1]) / beta
    for i in range(n - 2, -1, -1):
        sol[i] = sol[i] - gamma[i + 1] * sol[i + 1]
    return sol


def _spline_second_derivatives(x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """Second derivatives at the knots of OpenMM's natural (``createNaturalSpline``) or periodic cubic spline
    through ``(x, y)`` (periodic: continuous first and second derivatives across the ends); y: (n,) or (n, k)."""
    n = len(x)
    y = np.asarray(y, dtype=np.float64)
    h = (x[1:] - x[:-1]).reshape((-1,) + (1,) * (y.ndim - 1))
    slopes = (y[1:] - y[:-1]) / h
    if not periodic:  # m[0] = m[n-1] = 0
        a, b, c = np.zeros(n), np.ones(n), np.zeros(n)
        a[1:-1] = x[1:-1] - x[:-2]
        b[1:-1] = 2.0 * (x[2:] - x[:-2])
        c[1:-1] = x[2:] - x[1:-1]
        rhs = np.zeros_like(y)
        rhs[1:-1] = 6.0 * (slopes[1:] - slopes[:-1])
        return _solve_tridiagonal(a, b, c, rhs)
    if np.any(y[0] != y[-1]):
        raise ValueError("a periodic spline needs equal first and last values")
    # Periodic: m[n-1] = m[0]; the cyclic tridiagonal system for m[0..n-2], solved densely (tables are small).
    m = n - 1
    h = x[1:] - x[:-1]
    matrix = np.zeros((m, m))
    for i in range(m):
        before = h[i - 1]  # h[-1] is the last interval, the one before point 0
        matrix[i, (i - 1) % m] += before
        matrix[i, i] += 2.0 * (before + h[i])
        matrix[i, (i + 1) % m] += h[i]
    rhs = 6.0 * (slopes - np.roll(slopes, 1, axis=0))
    second = np.linalg.solve(matrix, rhs)
    return np.concatenate([second, second[:1]], axis=0)


def _spline_slopes(x: np.ndarray, y: np.ndarray, periodic: bool) -> np.ndarray:
    """First derivatives at the knots of the spline through ``(x, y)`` (OpenMM's ``evaluateSplineDerivative``
    at each knot: the interval to the right, the last knot from the interval to its left); y: (n, columns)."""
    second = _spline_second_derivatives(x, y, periodic)
    dx = (x[1:] - x[:-1]).reshape(-1, 1)
    left = (y[1:] - y[:-1]) / dx + (-2.0 * second[:-1] - second[1:]) * dx / 6.0  # at x[i], interval (i, i+1)
    last = (y[-1] - y[-2]) / dx[-1] + (second[-2] + 2.0 * second[-1]) * dx[-1] / 6.0
    return np.concatenate([left, last[None]], axis=0)


def _differentiate_along(table: np.ndarray, x: np.ndarray, axis: int, periodic: bool) -> np.ndarray:
    """Spline slopes of ``table`` along ``axis`` at every grid point."""
    moved = np.moveaxis(table, axis, 0)
    slopes = _spline_slopes(x, moved.reshape(moved.shape[0], -1), periodic).reshape(moved.shape)
    return np.moveaxis(slopes, 0, axis)


def tabulated_function(function: Any, name: str = "f") -> TabulatedFunction:
    """The torch version of one ``openmm.TabulatedFunction``; ``UnsupportedForceError`` for other classes."""
    kind = type(function).__name__
    if kind == "Discrete1DFunction":
        values = function.getFunctionParameters()
        return DiscreteFunction(name, values, (len(values),))
    if kind == "Discrete2DFunction":
        xsize, ysize, values = function.getFunctionParameters()
        return DiscreteFunction(name, values, (xsize, ysize))
    if kind == "Discrete3DFunction":
        xsize, ysize, zsize, values = function.getFunctionParameters()
        return DiscreteFunction(name, values, (xsize, ysize, zsize))
    periodic = bool(function.getPeriodic()) if hasattr(function, "getPeriodic") else False
    if kind == "Continuous1DFunction":
        values, lo, hi = function.getFunctionParameters()
        return ContinuousFunction(name, values, (len(values),), (lo,), (hi,), periodic)
    if kind == "Continuous2DFunction":
        xsize, ysize, values, xmin, xmax, ymin, ymax = function.getFunctionParameters()
        return ContinuousFunction(name, values, (xsize, ysize), (xmin, ymin), (xmax, ymax), periodic)
    if kind == "Continuous3DFunction":
        xsize, ysize, zsize, values, xmin, xmax, ymin, ymax, zmin, zmax = function.getFunctionParameters()
        return ContinuousFunction(name, values, (xsize, ysize, zsize), (xmin, ymin, zmin), (xmax, ymax, zmax), periodic)
    raise UnsupportedForceError(
        f"tabulated function {name!r} is a {kind}, which has no torch version; supported: "
        f"{', '.join(SUPPORTED_TABULATED_FUNCTIONS)}"
    )


def tabulated_functions(force: Any) -> dict[str, TabulatedFunction]:
    """The tabulated functions of an OpenMM custom force by name (``getTabulatedFunctionName(i)``)."""
    if not hasattr(force, "getNumTabulatedFunctions"):
        return {}
    out = {}
    for i in range(force.getNumTabulatedFunctions()):
        name = force.getTabulatedFunctionName(i)
        out[name] = tabulated_function(force.getTabulatedFunction(i), name)
    return out
