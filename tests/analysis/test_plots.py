"""Plots return matplotlib Figures that render, and refuse inconsistent input."""

import numpy as np
import pytest
from matplotlib.figure import Figure

from bgflow_se3.analysis import free_energy_profile_figure, ramachandran_figure, ramachandran_panels_figure


def test_ramachandran_figure_renders(tmp_path):
    rng = np.random.default_rng(0)
    phi, psi = rng.uniform(-np.pi, np.pi, 500), rng.normal(2.5, 0.3, 500)
    figure = ramachandran_figure(phi, psi, weights=rng.uniform(0.5, 1.5, 500), bins=30, title="test")
    assert isinstance(figure, Figure)
    mesh = figure.axes[0].collections[0]
    values = np.ma.masked_invalid(mesh.get_array())
    assert values.min() == 0.0 and values.count() > 0  # -log density shifted to its minimum
    figure.savefig(tmp_path / "rama.png")
    assert (tmp_path / "rama.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="equal length"):
        ramachandran_figure(phi, psi[:-1])


def test_profile_figure_with_reference_and_band(tmp_path):
    x = np.linspace(-3, 3, 20)
    f = 0.5 * x**2 + 1.0
    f[0] = np.inf  # an empty bin is not drawn
    figure = free_energy_profile_figure(x, f, np.full(20, 0.1), reference=(x, 0.5 * x**2, None))
    assert isinstance(figure, Figure)
    ax = figure.axes[0]
    assert len(ax.lines) == 2 and len(ax.collections) == 1
    y = ax.lines[0].get_ydata()
    assert np.isnan(y[0]) and np.nanmin(y) == 0.0
    figure.savefig(tmp_path / "profile.png")
    with pytest.raises(ValueError, match="finite"):
        free_energy_profile_figure(x, np.full(20, np.inf))


def test_ramachandran_panels_side_by_side(tmp_path):
    rng = np.random.default_rng(1)
    phi, psi = rng.uniform(-np.pi, np.pi, 300), rng.normal(-1.0, 0.5, 300)
    panels = [(phi, psi, None, "flow"), (phi, psi, rng.uniform(0, 1, 300), "reweighted"), (psi, phi, None, "md")]
    figure = ramachandran_panels_figure(panels, bins=20)
    assert [ax.get_title() for ax in figure.axes[:3]] == ["flow", "reweighted", "md"]
    figure.savefig(tmp_path / "panels.png")
    limits = {tuple(mesh.get_clim()) for ax in figure.axes[:3] for mesh in ax.collections}
    assert len(limits) == 1  # one colour scale for every panel
    with pytest.raises(ValueError, match="empty"):
        ramachandran_panels_figure([])
