"""Matplotlib figures for samples and free energies (Agg canvas, no pyplot state, never shown)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "free_energy_profile_figure",
    "profiles_grid_figure",
    "ramachandran_figure",
    "ramachandran_panels_figure",
]


def _figure(figsize: tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _ramachandran_axes(ax, phi: Any, psi: Any, weights: Any | None, bins: int, title: str | None):
    """Draw the -log density of (phi, psi) (kT, relative) into ``ax``; returns the mesh."""
    phi, psi = _numpy(phi), _numpy(psi)
    if phi.shape != psi.shape or phi.ndim != 1:
        raise ValueError(f"phi and psi must be 1-D of equal length, got {phi.shape} and {psi.shape}")
    w = None if weights is None else _numpy(weights)
    edges = np.linspace(-np.pi, np.pi, bins + 1)
    density, _, _ = np.histogram2d(phi, psi, bins=[edges, edges], weights=w, density=True)
    with np.errstate(divide="ignore"):
        free_energy = -np.log(density)
    free_energy -= np.min(free_energy[np.isfinite(free_energy)]) if np.isfinite(free_energy).any() else 0.0
    masked = np.ma.masked_invalid(free_energy.T)
    mesh = ax.pcolormesh(edges, edges, masked, cmap="viridis", shading="flat")
    ax.set_xlabel(r"$\phi$ (rad)")
    ax.set_ylabel(r"$\psi$ (rad)")
    ax.set_xlim(-np.pi, np.pi)
    ax.set_ylim(-np.pi, np.pi)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return mesh


def ramachandran_figure(
    phi: Any,
    psi: Any,
    *,
    weights: Any | None = None,
    bins: int = 60,
    title: str | None = None,
):
    """Ramachandran plot: 2-D histogram of (phi, psi) in radians on [-pi, pi]^2, colour = -log density (kT).

    phi, psi: shape (n,), radians. weights: optional importance weights (not log), shape (n,), to show the
    reweighted distribution. Returns a ``matplotlib.figure.Figure`` (save with ``figure.savefig(path)``).
    """
    figure = _figure((5.0, 4.2))
    ax = figure.add_subplot()
    mesh = _ramachandran_axes(ax, phi, psi, weights, bins, title)
    figure.colorbar(mesh, ax=ax, label=r"$-\log p$ (kT, relative)")
    return figure


def ramachandran_panels_figure(
    panels: Sequence[tuple[Any, Any, Any | None, str]], *, bins: int = 60, max_kT: float = 12.0
):
    """Ramachandran plots side by side, e.g. flow samples, reweighted flow samples and reference data.

    panels: ``(phi, psi, weights_or_None, title)`` per panel; phi, psi radians, shape (n,); weights not log.
    Each panel shows -log density in kT relative to its own minimum, on one colour scale shared by all panels and
    capped at ``max_kT`` (a bin holding one sample with a tiny weight would otherwise stretch the scale to hundreds
    of kT and flatten every basin into one colour). Returns a ``matplotlib.figure.Figure``.
    """
    if not panels:
        raise ValueError("panels is empty: pass at least one (phi, psi, weights, title)")
    figure = _figure((4.2 * len(panels) + 0.8, 4.2))
    axes = figure.subplots(1, len(panels), squeeze=False)[0]
    meshes = [_ramachandran_axes(ax, phi, psi, w, bins, title) for ax, (phi, psi, w, title) in zip(axes, panels)]
    top = max((float(m.get_array().max()) for m in meshes if m.get_array().count()), default=1.0)
    for mesh in meshes:  # one colour scale for all panels, so that the shared colour bar reads on each
        mesh.set_clim(0.0, max(min(top, max_kT), 1e-9))
    figure.colorbar(meshes[-1], ax=list(axes), label=r"$-\log p$ (kT, relative)")
    return figure


def free_energy_profile_figure(
    centers: Any,
    f: Any,
    df: Any | None = None,
    *,
    reference: tuple[Any, Any, Any | None] | None = None,
    label: str = "estimate",
    reference_label: str = "reference",
    xlabel: str = r"$\phi$ (rad)",
    title: str | None = None,
    max_kT: float | None = 15.0,
):
    """1-D free-energy profile in kT with a one-sigma band; optionally a reference profile overlaid.

    centers: bin centres, shape (m,); f: free energy, kT, shape (m,) (+inf = empty bin, not drawn); df: one sigma.
    reference: ``(centers, f, df_or_None)`` of a reference profile (e.g. umbrella sampling), drawn as a line.
    Both are shifted to their minimum; the axis stops at ``max_kT`` (None: no limit) so that barrier bins resting
    on a few samples do not hide the basins. Returns a ``matplotlib.figure.Figure``.
    """
    figure = _figure((5.5, 3.8))
    ax = figure.add_subplot()
    series = [(centers, f, df, label, "C0")]
    if reference is not None:
        series.append((*reference, reference_label, "k"))
    for x, y, dy, name, colour in series:
        x, y = _numpy(x), _numpy(y)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(f"centers and f must be 1-D of equal length, got {x.shape} and {y.shape}")
        finite = np.isfinite(y)
        if not finite.any():
            raise ValueError(f"profile {name!r} has no finite value to draw")
        y = np.where(finite, y - y[finite].min(), np.nan)
        ax.plot(x, y, color=colour, label=name, marker="." if colour != "k" else None)
        if dy is not None:
            dy = _numpy(dy)
            ax.fill_between(x, y - dy, y + dy, color=colour, alpha=0.25, linewidth=0)
    if max_kT is not None:
        ax.set_ylim(-0.5, max_kT)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("free energy (kT)")
    ax.legend()
    if title:
        ax.set_title(title)
    return figure


def profiles_grid_figure(
    profiles: Sequence[tuple[str, Any, Any, Any | None, tuple[Any, Any] | None]],
    *,
    columns: int = 3,
    max_kT: float | None = 15.0,
    xlabel: str = "angle (rad)",
):
    """One free-energy profile per panel, e.g. every torsion of a molecule; a reference overlaid where given.

    profiles: ``(title, centers, f, df_or_None, reference_or_None)`` per panel: centers (m,), f (m,) in kT (+inf:
    empty bin, not drawn), df one sigma; reference ``(centers, f)`` in kT, drawn as a black line. Each curve is
    shifted to its minimum; a panel without a finite value says so. Returns a ``matplotlib.figure.Figure``.
    """
    if not profiles:
        raise ValueError("profiles is empty: pass at least one (title, centers, f, df, reference)")
    n_cols = min(columns, len(profiles))
    n_rows = -(-len(profiles) // n_cols)
    figure = _figure((3.6 * n_cols, 2.8 * n_rows))
    axes = figure.subplots(n_rows, n_cols, squeeze=False).ravel()
    for ax, (title, centers, f, df, reference) in zip(axes, profiles):
        series = [(centers, f, df, "flow, reweighted", "C0")]
        if reference is not None:
            series.append((reference[0], reference[1], None, "reference", "k"))
        for x, y, dy, name, colour in series:
            x, y = _numpy(x), _numpy(y)
            finite = np.isfinite(y)
            if not finite.any():
                ax.text(0.5, 0.5, f"{name}: no sample", ha="center", va="center", transform=ax.transAxes)
                continue
            y = np.where(finite, y - y[finite].min(), np.nan)
            ax.plot(x, y, color=colour, label=name, marker="." if colour != "k" else None)
            if dy is not None:
                dy = np.where(np.isfinite(_numpy(dy)), _numpy(dy), np.nan)
                ax.fill_between(x, y - dy, y + dy, color=colour, alpha=0.25, linewidth=0)
        if max_kT is not None:
            ax.set_ylim(-0.5, max_kT)
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("free energy (kT)")
    for ax in axes[len(profiles) :]:
        ax.set_axis_off()
    axes[0].legend(fontsize="small")
    return figure
