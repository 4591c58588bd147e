"""Bad inputs to the public entry points: NaN, inf, 1e30, wrong shape, dtype or device, empty batches.

Every case ends in a specific error whose message names the problem, or in a documented result (u = +inf and zero
force for a configuration that cannot be evaluated); never a silent NaN or a made-up number.
"""

import numpy as np
import pytest
import torch

from bgflow_se3.analysis import (
    chirality_signs,
    d_chirality_fraction,
    histogram_kl,
    periodic_histogram,
    phi_psi,
    ramachandran_kl,
)
from bgflow_se3.energy import (
    DoubleWellEnergy,
    LennardJonesEnergy,
    OpenMMEnergy,
    TorchForceField,
    energy_for_device,
    regularize_energy,
)
from bgflow_se3.errors import EnergyEvaluationError, NonFiniteInputError
from bgflow_se3.flow import (
    AugmentedCouplingFlow,
    GroupAveragedFlow,
    InternalCoordinateFlow,
    KernelFlow,
    NonEquivariantFlow,
    zmatrix_from_bonds,
)
from bgflow_se3.sampling import (
    AnnealedImportanceSampler,
    HamiltonianMonteCarlo,
    langevin_dynamics,
    minimise,
    sample_with_energies,
)
from bgflow_se3.simulate import load_particle_data
from bgflow_se3.systems import lennard_jones_system, load_aldp

# ------------------------------------------------------------------------------------------------- energies


@pytest.fixture(scope="module")
def energies(aldp):
    """name -> (energy with on_error="inf", the same with on_error="raise", one good float64 batch (3, n, d))."""
    g = torch.Generator().manual_seed(1)
    x_aldp = torch.from_numpy(aldp.positions_nm) + 0.01 * torch.randn(3, 22, 3, generator=g, dtype=torch.float64)
    x_lj = torch.randn(3, 13, 3, generator=g, dtype=torch.float64) * 1.5
    x_dw = torch.randn(3, 4, 2, generator=g, dtype=torch.float64) * 2.0
    made = {
        "dw4": (DoubleWellEnergy(), DoubleWellEnergy(on_error="raise"), x_dw),
        "lj13": (LennardJonesEnergy(13), LennardJonesEnergy(13, on_error="raise"), x_lj),
        "openmm": (OpenMMEnergy(aldp.system), OpenMMEnergy(aldp.system, on_error="raise"), x_aldp),
        "torchff": (
            TorchForceField.from_system(aldp.system, 300.0),
            TorchForceField.from_system(aldp.system, 300.0, on_error="raise"),
            x_aldp,
        ),
    }
    yield made
    for name in ("openmm",):
        for energy in made[name][:2]:
            energy.close()


ENERGY_NAMES = ["dw4", "lj13", "openmm", "torchff"]


def _with_bad_row(x: torch.Tensor, value: float) -> torch.Tensor:
    y = x.clone()
    y[1, 0, 0] = value
    return y


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_non_finite_row_gets_inf_energy_and_zero_force(energies, name, value):
    energy, strict, x = energies[name]
    y = _with_bad_row(x, value)
    u = energy(y)
    assert u[1] == float("inf") and torch.isfinite(u[[0, 2]]).all()
    torch.testing.assert_close(u[[0, 2]], energy(x)[[0, 2]])
    force = energy.force(y)
    assert (force[1] == 0).all() and torch.isfinite(force).all()
    with pytest.raises(NonFiniteInputError, match="NaN or infinite coordinates"):
        strict(y)


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_huge_float64_coordinates_give_a_finite_energy_or_inf_never_nan(energies, name):
    energy, _, x = energies[name]
    u = energy(x * 1e30)
    assert not torch.isnan(u).any() and (u > 0).all()  # stretched far apart: bonds (or walls) cost, never NaN
    assert torch.isfinite(energy.force(x * 1e30)).all()


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_float32_overflow_gives_inf_or_raises(energies, name):
    energy, strict, x = energies[name]
    y = (x * 1e30).float()  # finite in float32, but the energy overflows it
    u = energy(y)
    assert u.dtype == torch.float32 and not torch.isnan(u).any()
    try:  # on_error="raise": an error naming the overflow, or the same +inf (base energies keep +inf as a value)
        u_strict = strict(y)
    except EnergyEvaluationError as error:
        assert "configurations" in str(error)
    else:
        assert torch.equal(u_strict, u)


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_coincident_atoms_give_inf_and_zero_force_or_a_finite_energy(energies, name):
    energy, strict, x = energies[name]
    y = torch.zeros_like(x[:2])
    u = energy(y)
    force = energy.force(y)
    assert not torch.isnan(u).any() and not torch.isnan(force).any()
    if torch.isinf(u).any():  # LJ and Coulomb singularities: +inf with zero force, or an error when asked
        assert (force[torch.isinf(u)] == 0).all()
        with pytest.raises(EnergyEvaluationError, match="configurations"):
            strict(y)


BAD_INPUTS = {
    "missing_atom": (lambda x: x[:, :-1], ValueError, r"shape \(batch, \d+, \d\)"),
    "extra_axis": (lambda x: x[None], ValueError, "shape"),
    "int64": (lambda x: x.long(), TypeError, "float32 or float64"),
    "float16": (lambda x: x.half(), TypeError, "half precision"),
    "bfloat16": (lambda x: x.bfloat16(), TypeError, "float32 or float64"),
    "complex": (lambda x: x.to(torch.complex128), TypeError, "float32 or float64"),
    "numpy": (lambda x: x.numpy(), TypeError, "torch.Tensor"),
    "meta_device": (lambda x: x.to("meta"), ValueError, "meta"),
}


@pytest.mark.parametrize("bad", list(BAD_INPUTS))
@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_bad_positions_raise_a_clear_error(energies, name, bad):
    energy, _, x = energies[name]
    transform, error, match = BAD_INPUTS[bad]
    with pytest.raises(error, match=match):
        energy(transform(x))
    with pytest.raises(error, match=match):
        energy.force(transform(x))


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_empty_batch_gives_empty_results(energies, name):
    energy, _, x = energies[name]
    assert energy(x[:0]).shape == (0,) and energy.force(x[:0]).shape == x[:0].shape


@pytest.mark.parametrize("name", ENERGY_NAMES)
def test_float32_positions_match_float64(energies, name):
    energy, _, x = energies[name]
    u32 = energy(x.float())
    assert u32.dtype == torch.float32
    torch.testing.assert_close(u32.double(), energy(x), rtol=1e-4, atol=1e-3)


def test_energy_constructors_refuse_bad_temperatures_and_devices(aldp):
    with pytest.raises(ValueError, match="positive and finite"):
        OpenMMEnergy(aldp.system, temperature=float("inf"))
    with pytest.raises(ValueError, match="positive and finite"):
        TorchForceField.from_system(aldp.system, float("nan"))
    with pytest.raises(TypeError, match="number in kelvin"):
        TorchForceField.from_system(aldp.system, "300")
    with pytest.raises(ValueError, match="'cpu' or 'cuda"):
        energy_for_device(aldp.system, 300.0, "meta")
    with pytest.raises(TypeError, match="floating point"):
        regularize_energy(torch.tensor([1, 2]))
    capped = regularize_energy(torch.tensor([float("nan"), float("inf"), -float("inf"), 1e30]))
    assert torch.isfinite(capped).all() and torch.allclose(capped, capped[0])  # documented: every bad value capped


# ------------------------------------------------------------------------------------------------------ flows


def _flows():
    torch.manual_seed(0)
    chain = zmatrix_from_bonds(5, [(0, 1), (1, 2), (2, 3), (3, 4)])
    return {
        "augmented": (AugmentedCouplingFlow(4, dim=2, n_blocks=1).double(), (4, 2)),
        "group_averaged": (GroupAveragedFlow(4, 2).double(), (4, 2)),
        "non_equivariant": (NonEquivariantFlow(4, 2).double(), (4, 2)),
        "kernel_cnf": (KernelFlow(4, 2, n_steps=2).double(), (4, 2)),
        "internal": (InternalCoordinateFlow(chain, n_layers=2, hidden=8).double(), (5, 3)),
    }


@pytest.fixture(scope="module")
def flows():
    return _flows()


def _log_prob(flow, x):
    if isinstance(flow, AugmentedCouplingFlow):
        return flow.log_prob(x, n_samples=2, generator=torch.Generator().manual_seed(0))
    return flow.log_prob(x)


FLOW_BAD = {
    "nan": (lambda x: _with_bad_row(x, float("nan")), NonFiniteInputError, "NaN or infinite"),
    "inf": (lambda x: _with_bad_row(x, float("inf")), NonFiniteInputError, "NaN or infinite"),
    "missing_atom": (lambda x: x[:, :-1], ValueError, "shape"),
    "int64": (lambda x: x.long(), TypeError, "dtype|float32 or float64"),
    "float16": (lambda x: x.half(), TypeError, "float16"),
    "meta_device": (lambda x: x.to("meta"), ValueError, "meta"),
}


@pytest.mark.parametrize("bad", list(FLOW_BAD))
@pytest.mark.parametrize("name", list(_flows()))
def test_flow_log_prob_refuses_bad_positions(flows, name, bad):
    flow, shape = flows[name]
    transform, error, match = FLOW_BAD[bad]
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    with pytest.raises(error, match=match):
        _log_prob(flow, transform(x))


@pytest.mark.parametrize("name", list(_flows()))
def test_flow_mixed_precision_is_refused_or_converted_and_empty_batches_work(flows, name):
    flow, shape = flows[name]
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    if name == "augmented":  # documented: x and a must have the flow's dtype
        with pytest.raises(TypeError, match="dtype torch.float32 but the flow is torch.float64"):
            _log_prob(flow, x.float())
    else:  # documented: float32 input is converted to the flow's float64
        torch.testing.assert_close(_log_prob(flow, x.float()), _log_prob(flow, x.float().double()))
    assert _log_prob(flow, x[:0]).shape == (0,)
    out = flow.sample(0)
    assert out[0].shape == (0, *shape) and out[-1].shape == (0,)
    with pytest.raises(ValueError, match="n must be >= 0"):
        flow.sample(-1)


@pytest.mark.parametrize(
    "name",
    ["augmented", "group_averaged", "non_equivariant", "kernel_cnf"],
)
def test_flow_log_prob_of_huge_coordinates_is_very_negative_not_nan(flows, name):
    flow, shape = flows[name]
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 1e30
    log_q = _log_prob(flow, x)
    assert not torch.isnan(log_q).any() and (log_q < -1e50).all()


# -------------------------------------------------------------------------------------------------- analysis


@pytest.mark.parametrize(
    "bad, error, match",
    [
        (lambda x: _with_bad_row(x, float("nan")), ValueError, "NaN or inf"),
        (lambda x: x * 1e30, ValueError, "undefined"),
        (lambda x: x[:, :-1], ValueError, "shape"),
        (lambda x: x.long(), TypeError, "floating point"),
        (lambda x: x.to("meta"), ValueError, "meta"),
    ],
    ids=["nan", "huge", "shape", "int64", "meta"],
)
def test_phi_psi_refuses_bad_coordinates(aldp, x_aldp, bad, error, match):
    with pytest.raises(error, match=match):
        phi_psi(aldp.topology, bad(x_aldp))


def test_analysis_functions_refuse_nan_and_empty_input(aldp, x_aldp):
    phi, psi = phi_psi(aldp.topology, x_aldp[:0])
    assert phi.shape == psi.shape == (0,)  # documented: an empty batch gives empty angles
    with pytest.raises(ValueError, match="NaN or inf"):
        chirality_signs(aldp.topology, _with_bad_row(x_aldp, float("nan")))
    with pytest.raises(ValueError, match="empty batch"):
        d_chirality_fraction(aldp.topology, x_aldp[:0])
    with pytest.raises(ValueError, match="NaN or inf"):
        periodic_histogram(np.array([np.nan, 1.0]))
    with pytest.raises(ValueError, match="n > 0"):
        periodic_histogram(np.array([]))
    with pytest.raises(ValueError, match="NaN or inf"):
        histogram_kl(np.array([np.inf, 1.0]), np.ones(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        ramachandran_kl(np.zeros((5, 2)), np.zeros((5, 2)), weights_q=np.array([np.nan, 1, 1, 1, 1]))


# -------------------------------------------------------------------------------------------------- sampling


@pytest.fixture(scope="module")
def vacuum_ff():
    aldp = load_aldp("vacuum")
    return TorchForceField.from_system(aldp.system, 300.0), torch.from_numpy(aldp.positions_nm)[None].repeat(2, 1, 1)


def test_langevin_and_minimise_refuse_bad_starts(vacuum_ff):
    energy, x = vacuum_ff
    masses = torch.full((22,), 12.0, dtype=torch.float64)
    with pytest.raises(NonFiniteInputError, match="NaN or infinite positions"):
        langevin_dynamics(energy, _with_bad_row(x, float("nan")), masses, 4, save_every=2)
    with pytest.raises(ValueError, match="masses must be positive"):
        langevin_dynamics(energy, x, torch.zeros(22, dtype=torch.float64), 4, save_every=2)
    with pytest.raises(ValueError, match="masses must be positive"):
        langevin_dynamics(energy, x, masses * float("nan"), 4, save_every=2)
    with pytest.raises(ValueError, match="must be positive"):
        langevin_dynamics(energy, x, masses, 4, timestep_ps=float("nan"))
    with pytest.raises(NonFiniteInputError, match="NaN or infinite positions"):
        minimise(energy, _with_bad_row(x, float("inf")), 2)
    with pytest.raises(ValueError, match="meta"):
        minimise(energy, x.to("meta"), 2)


def test_ais_refuses_bad_inputs_and_gives_weight_zero_to_nan_rows():
    dw = DoubleWellEnergy()
    ais = AnnealedImportanceSampler(2, step_size=0.1, n_leapfrog=2)
    z = torch.randn(4, 4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))

    def log_q(z):
        return -0.5 * z.pow(2).flatten(1).sum(1)

    with pytest.raises(TypeError, match="float32 or float64"):
        ais.run(z.long(), log_q, lambda z: -dw(z))
    with pytest.raises(ValueError, match=r"log_p_fn must return a tensor of shape \(4,\)"):
        ais.run(z, log_q, lambda z: -dw(z)[:, None])
    result = ais.run(_with_bad_row(z, float("nan")), log_q, lambda z: -dw(z), torch.Generator().manual_seed(0))
    assert result.log_w[1] == -float("inf") and torch.isfinite(result.log_w[[0, 2, 3]]).all()  # documented
    assert ais.run(z[:0], log_q, lambda z: -dw(z)).log_w.shape == (0,)
    with pytest.raises(ValueError, match="step_size > 0"):
        HamiltonianMonteCarlo(2, step_size=float("nan"))
    with pytest.raises(ValueError, match="n >= 1"):
        sample_with_energies(GroupAveragedFlow(4, 2), dw, 0)


def test_system_loaders_refuse_unknown_names():
    with pytest.raises(ValueError, match="solvent must be one of"):
        load_aldp("water")
    with pytest.raises(ValueError, match="at least 2 particles"):
        lennard_jones_system(1)
    with pytest.raises(ValueError, match="unknown particle system"):
        load_particle_data("lj7")
