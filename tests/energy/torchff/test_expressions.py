"""Lepton expressions compiled into torch, against OpenMM's own evaluation (Reference platform, float64)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bgflow_se3.energy.torchff.expressions import (
    PARTICLE_FUNCTIONS,
    SUPPORTED_FUNCTIONS,
    ExpressionSyntaxError,
    compile_expression,
    tabulated_functions,
)
from bgflow_se3.errors import UnsupportedForceError

openmm = pytest.importorskip("openmm")

ENERGY_RTOL = 1e-6
FORCE_RTOL = 1e-5


def _context(system):
    integrator = openmm.VerletIntegrator(0.001)
    return openmm.Context(system, integrator, openmm.Platform.getPlatformByName("Reference")), integrator


def _openmm_external(expression: str, positions: np.ndarray, globals_: dict[str, float]) -> tuple[float, np.ndarray]:
    """OpenMM's energy (kJ/mol) and forces (n, 3) of ``CustomExternalForce(expression)`` on every particle."""
    system = openmm.System()
    force = openmm.CustomExternalForce(expression)
    for name, value in globals_.items():
        force.addGlobalParameter(name, value)
    for i in range(len(positions)):
        system.addParticle(1.0)
        force.addParticle(i, [])
    system.addForce(force)
    context, _integrator = _context(system)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


def _ours(
    expression: str, positions: np.ndarray, globals_: dict[str, float], dtype=torch.float64
) -> tuple[float, np.ndarray, float]:
    """Our energy, forces and sum of |per-particle energies| for the same per-particle expression."""
    compiled = compile_expression(expression)
    x = torch.tensor(positions, dtype=dtype, requires_grad=True)
    values = {"x": x[:, 0], "y": x[:, 1], "z": x[:, 2], **globals_}
    energy = compiled(values)
    assert energy.shape == (len(positions),) and energy.dtype == dtype
    grad = None
    if energy.requires_grad:  # not when the expression reads no coordinate
        (grad,) = torch.autograd.grad(energy.sum(), x, allow_unused=True)
    grad = torch.zeros_like(x) if grad is None else grad
    return float(energy.detach().sum()), -grad.double().numpy(), float(energy.detach().abs().sum())


def _assert_matches(expression: str, positions: np.ndarray, globals_: dict[str, float] | None = None) -> None:
    globals_ = globals_ or {}
    energy, force, scale = _ours(expression, positions, globals_)
    ref_energy, ref_force = _openmm_external(expression, positions, globals_)
    np.testing.assert_allclose(energy, ref_energy, rtol=ENERGY_RTOL, atol=1e-12 * (1 + scale), err_msg=expression)
    atol = FORCE_RTOL * np.abs(ref_force).max() + 1e-12
    np.testing.assert_allclose(force, ref_force, rtol=FORCE_RTOL, atol=atol, err_msg=expression)


def _points(n: int = 24, seed: int = 0) -> np.ndarray:
    """``n`` random points in [-0.9, 0.9]^3 plus points on the boundaries of step/delta/abs/min/max."""
    rng = np.random.default_rng(seed)
    special = np.array([[0.0, 0.3, -0.2], [0.4, 0.4, 0.1], [-0.5, 0.0, 0.0], [0.25, -0.25, 0.5]])
    return np.concatenate([rng.uniform(-0.9, 0.9, size=(n, 3)), special])


#: One expression per built-in function, arguments kept in the function's domain for x, y, z in [-0.9, 0.9].
FUNCTION_CASES = {
    "sqrt": "sqrt(x + 2) * y",
    "exp": "exp(x * y)",
    "log": "log(x + 2) - z",
    "sin": "sin(3 * x) * y",
    "cos": "cos(2 * y + z)",
    "sec": "sec(x) + y",
    "csc": "csc(x + 2)",
    "tan": "tan(x)",
    "cot": "cot(y + 2)",
    "asin": "asin(x) * z",
    "acos": "acos(y)",
    "atan": "atan(3 * x)",
    "atan2": "atan2(y, x)",
    "sinh": "sinh(x) * y",
    "cosh": "cosh(y)",
    "tanh": "tanh(2 * z)",
    "erf": "erf(2 * x)",
    "erfc": "erfc(y) * z",
    "step": "step(x) * y + step(-z) * x",
    "delta": "delta(x) * y + delta(x - y) * z + x",
    "square": "square(x + y)",
    "cube": "cube(z - x)",
    "recip": "recip(x + 2)",
    "min": "min(x, y) + min(y, 0.3)",
    "max": "max(x, y) * z + max(z, 0.1)",
    "abs": "abs(x) * y + abs(y - 0.3)",
    "floor": "floor(3 * x) * y",
    "ceil": "ceil(3 * y) * z",
    "select": "select(step(x), y^2, z) + select(x - y, x, 2 * z)",
}


def test_every_supported_builtin_has_a_case():
    assert set(SUPPORTED_FUNCTIONS) - set(PARTICLE_FUNCTIONS) == set(FUNCTION_CASES)


@pytest.mark.parametrize("name", sorted(FUNCTION_CASES))
def test_function_matches_openmm(name):
    _assert_matches(FUNCTION_CASES[name], _points())


GRAMMAR_CASES = [
    "x + y * z - x / (y + 2)^2",  # precedence
    "-x^2 + -2^2 * y",  # unary minus binds weaker than ^: -(2^2)
    "2^3^2 * x",  # ^ is right associative: 2^9
    "x - -y",
    "-(x) * -y",
    "x * -y^2",
    "x / (y + 2) / (z + 2) - x - y - z",  # left associative
    "(x + 2)^-1.5 + (y + 2)^0.5 + (z + 2)^-1 + x^3 + y^2 + (x + 2)^2.5",  # negative and fractional exponents
    "(x + 2)^(y + 1) + (y + 3)^(z * x)",  # variable exponents
    "a * b; a = b + x; b = y^2 + 1",  # a definition may use the definitions after it
    "c; c = d * d; d = sin(x) + e; e = y",
    "1e-3 * x + 2.5E+1 * y + .5 * z + 3. * x + 1.5e2",
    "  x *\ty\n + z ",
    "sin(cos(x) * exp(-y^2)) / (2 + tanh(z))",
    "k * x + c - k^2",  # global parameters
    "square(sqrt(x - 1)) + sqrt((y - 1) * (y - 1))",  # Lepton rewrites: x - 1 and abs(y - 1), no NaN
    "0 * log(x - 2) + y + x / x + (x - x) * log(x - 2) + (z - 1)^0 + 0^(x + y)",  # 0*NaN is 0 after rewriting
    # Constant folding. (A NaN constant such as log(-1) makes OpenMM 8.x's Lepton optimizer loop forever.)
    "select(1, x, log(z - 2)) + select(0, log(z - 2), y) + 2 * 3 + sqrt(4) - 2^0.5",
]


@pytest.mark.parametrize("expression", GRAMMAR_CASES)
def test_grammar_matches_openmm(expression):
    _assert_matches(expression, _points(), {"k": 1.7, "c": -0.4})


def test_lepton_values():
    """Lepton's precedence and associativity, pinned to the values OpenMM gives."""
    for text, expected in [("-2^2", -4.0), ("2^-1", 0.5), ("2^3^2", 512.0), ("-2*3", -6.0), ("2-3-4", -5.0)]:
        assert float(compile_expression(text)({})) == expected, text


def test_nan_constant_compiles():
    """OpenMM's Lepton optimizer loops forever on a NaN constant (e.g. log(-1)); ours folds it and stops."""
    out = compile_expression("x + log(-1) + 0 * y")({"x": torch.ones(2), "y": 1.0})
    assert torch.isnan(out).all()


def _random_expression(rng: np.random.Generator, depth: int) -> str:
    """A random expression in x, y, z, k whose value is finite for x, y, z in [-0.9, 0.9] (bounded arguments)."""

    def leaf() -> str:
        choice = rng.integers(5)
        if choice == 4:
            return repr(round(float(rng.uniform(-2, 2)), 3))
        return "xyzk"[choice]

    if depth == 0:
        return leaf()
    a = _random_expression(rng, depth - 1)
    b = _random_expression(rng, depth - 1)
    c = _random_expression(rng, depth - 1)
    forms = [
        f"({a} + {b})",
        f"({a} - {b})",
        f"{a} * {b}",
        f"{a} / (1.5 + {b}^2)",
        f"-{a}",
        f"(1.2 + square({a}))^{round(float(rng.uniform(-2, 2)), 2)}",
        f"(1.1 + abs({a}))^tanh({b})",
        f"sin({a})",
        f"cos({a} * {b})",
        f"atan({a})",
        f"tanh({a})",
        f"erf({a})",
        f"erfc({a})",
        f"exp(tanh({a}))",
        f"log(1 + square({a}))",
        f"sqrt(1 + {a}^2)",
        f"abs({a})",
        f"step({a}) * {b}",
        f"select(step({a}), {b}, {c})",
        f"min({a}, {b})",
        f"max({a}, {b})",
        f"cube(tanh({a}))",
        f"recip(2 + sin({a}))",
        f"asin(0.9 * tanh({a}))",
        f"acos(0.9 * tanh({a}))",
        f"atan2({a}, 1.5 + {b}^2)",
        f"sinh(tanh({a}))",
        f"cosh(tanh({a}))",
        f"sec(tanh({a}))",
        f"csc(1 + 0.5 * tanh({a}))",
        f"cot(1 + 0.5 * tanh({a}))",
        f"delta(floor({a})) * {b}",
        f"ceil({a}) * {b}",
    ]
    return forms[rng.integers(len(forms))]


@pytest.mark.parametrize("seed", range(24))
def test_random_expressions_match_openmm(seed):
    rng = np.random.default_rng(seed)
    body = _random_expression(rng, 3)
    expression = f"{body} + u * v; u = {_random_expression(rng, 2)}; v = {_random_expression(rng, 2)}"
    _assert_matches(expression, _points(12, seed), {"k": float(rng.uniform(-1, 1))})


def _openmm_compound(expression: str, positions: np.ndarray, functions: dict) -> tuple[dict, float, np.ndarray]:
    """Our tabulated functions and OpenMM's energy and forces of a one-particle CustomCompoundBondForce per point."""
    system = openmm.System()
    force = openmm.CustomCompoundBondForce(1, expression)
    for name, function in functions.items():
        force.addTabulatedFunction(name, function)  # the force now owns the function object
    for i in range(len(positions)):
        system.addParticle(1.0)
        force.addBond([i], [])
    ours = tabulated_functions(force)
    system.addForce(force)
    context, _integrator = _context(system)
    context.setPositions(positions)
    state = context.getState(getEnergy=True, getForces=True)
    return ours, state.getPotentialEnergy()._value, state.getForces(asNumpy=True)._value


def _periodic_grid(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    grid = rng.normal(size=shape)
    for axis in range(grid.ndim):
        index = [slice(None)] * grid.ndim
        first = list(index)
        first[axis], index[axis] = 0, -1
        grid[tuple(index)] = grid[tuple(first)]
    return grid


def _tabulated_case(kind: str, rng: np.random.Generator):
    """(expression, OpenMM function) for one kind of tabulated function; grids in the OpenMM layout (x fastest)."""
    if kind == "continuous1d":
        return "f(x1) * (1 + y1)", openmm.Continuous1DFunction(list(rng.normal(size=9)), -0.5, 1.5)
    if kind == "continuous1d_periodic":
        values = list(_periodic_grid(rng, (9,)))
        return "f(x1)", openmm.Continuous1DFunction(values, -0.5, 1.0, True)
    if kind == "continuous2d":
        return "f(x1, y1)", openmm.Continuous2DFunction(5, 7, list(rng.normal(size=35)), -0.5, 1.5, -0.3, 1.9)
    if kind == "continuous2d_periodic":
        grid = _periodic_grid(rng, (7, 5))  # (ysize, xsize): x fastest when flattened
        return "f(x1, y1)", openmm.Continuous2DFunction(5, 7, list(grid.ravel()), -0.5, 1.0, -0.3, 0.9, True)
    if kind == "continuous3d":
        values = list(rng.normal(size=120))
        return "f(x1, y1, z1)", openmm.Continuous3DFunction(5, 4, 6, values, -0.5, 1.5, -0.3, 1.9, -0.1, 1.2)
    if kind == "continuous3d_periodic":
        grid = _periodic_grid(rng, (6, 4, 5))
        values = list(grid.ravel())
        return "f(x1, y1, z1)", openmm.Continuous3DFunction(5, 4, 6, values, -0.5, 1.0, -0.3, 0.9, -0.1, 1.2, True)
    if kind == "discrete1d":
        return "f(4 * x1) * x1", openmm.Discrete1DFunction(list(rng.normal(size=5)))
    if kind == "discrete2d":
        return "f(3 * x1, 3 * y1) * x1", openmm.Discrete2DFunction(3, 4, list(rng.normal(size=12)))
    if kind == "discrete3d":
        return "f(3 * x1, 3 * y1, 2 * z1) * y1", openmm.Discrete3DFunction(3, 4, 2, list(rng.normal(size=24)))
    raise ValueError(kind)


TABULATED_KINDS = [
    "continuous1d",
    "continuous1d_periodic",
    "continuous2d",
    "continuous2d_periodic",
    "continuous3d",
    "continuous3d_periodic",
    "discrete1d",
    "discrete2d",
    "discrete3d",
]


@pytest.mark.parametrize("kind", TABULATED_KINDS)
def test_tabulated_function_matches_openmm(kind):
    """Inside and outside the table range (zero outside, periodic wrap, discrete clamping), values and forces."""
    rng = np.random.default_rng(7)
    expression, function = _tabulated_case(kind, rng)
    # The lower corner of the tables; not the upper one: there OpenMM's 2D/3D splines throw (rounding of the last
    # knot) and abort the process.
    positions = np.concatenate([rng.uniform(-1.2, 2.2, size=(40, 3)), [[-0.5, -0.3, -0.1]]])
    functions, ref_energy, ref_force = _openmm_compound(expression, positions, {"f": function})
    compiled = compile_expression(expression, functions, particle_functions=True)
    x = torch.tensor(positions, requires_grad=True)
    energy = compiled({"p1": x})
    (grad,) = torch.autograd.grad(energy.sum(), x)
    np.testing.assert_allclose(float(energy.detach().sum()), ref_energy, rtol=ENERGY_RTOL, atol=1e-10)
    np.testing.assert_allclose(-grad.numpy(), ref_force, rtol=FORCE_RTOL, atol=FORCE_RTOL * np.abs(ref_force).max())


def test_tabulated_function_in_float32():
    rng = np.random.default_rng(3)
    expression, function = _tabulated_case("continuous2d", rng)
    positions = rng.uniform(-0.4, 1.4, size=(16, 3))
    functions, ref_energy, _ = _openmm_compound(expression, positions, {"f": function})
    compiled = compile_expression(expression, functions, particle_functions=True)
    energy = compiled({"p1": torch.tensor(positions, dtype=torch.float32)})
    assert energy.dtype == torch.float32
    np.testing.assert_allclose(float(energy.sum()), ref_energy, rtol=1e-5, atol=1e-5)


def test_unknown_function_is_named_with_the_supported_ones():
    with pytest.raises(UnsupportedForceError, match=r"'foo'.*sqrt.*select"):
        compile_expression("foo(x) + 1")


def test_geometry_functions_need_particle_mode():
    with pytest.raises(UnsupportedForceError, match="distance"):
        compile_expression("distance(p1, p2)")
    assert compile_expression("distance(p1, p2)", particle_functions=True).particles == {"p1", "p2"}


def test_periodicdistance_is_refused_by_name():
    with pytest.raises(UnsupportedForceError, match="periodicdistance.*periodic"):
        compile_expression("periodicdistance(x, y, z, 0, 0, 0)")


@pytest.mark.parametrize(
    "text",
    ["x +", "(x + 1", "x + 1)", "x y", "sin()", "sin(x, y)", "atan2(x)", "2e*x", "x; = 3", "x; y", "+x", "*x", ""],
)
def test_syntax_errors_quote_the_expression(text):
    with pytest.raises(ExpressionSyntaxError) as info:
        compile_expression(text)
    assert f'"{text}"' in str(info.value)


def test_variables_after_inlining_and_simplification():
    assert compile_expression("a * b; a = r^2; b = k + c").variables == {"r", "k", "c"}
    assert compile_expression("0 * foo + x").variables == {"x"}  # OpenMM drops foo too
    assert compile_expression("2 * 3").variables == frozenset()
    compound = compile_expression("x1 * distance(p2, p3) + k", particle_functions=True)
    assert compound.variables == {"p1", "p2", "p3", "k"} and compound.particles == {"p1", "p2", "p3"}
    centroid = compile_expression("distance(g1, g2) * y2", particle_functions=True, particle_prefix="g")
    assert centroid.particles == {"g1", "g2"}


def test_missing_variable_is_named():
    with pytest.raises(KeyError, match="needs values for k"):
        compile_expression("k * r")({"r": torch.ones(3)})


def test_result_broadcasts_to_all_inputs():
    r = torch.ones(4, 5, dtype=torch.float64)
    assert compile_expression("2 * 3")({"r": r}).shape == (4, 5)
    assert compile_expression("k")({"r": r, "k": torch.arange(5.0, dtype=torch.float64)}).shape == (4, 5)
    p = torch.zeros(4, 5, 3)
    out = compile_expression("x1 + 1", particle_functions=True)({"p1": p})
    assert out.shape == (4, 5) and out.dtype == torch.float32


def test_dtype_follows_input_and_float32_is_close():
    text = "exp(-x^2) * select(step(x), 1, 2) + k * atan2(x, 2) + min(x, 0.1)"
    x64 = torch.linspace(-1, 1, 11, dtype=torch.float64)
    compiled = compile_expression(text)
    out64 = compiled({"x": x64, "k": 0.5})
    out32 = compiled({"x": x64.float(), "k": 0.5})
    assert out64.dtype == torch.float64 and out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out64, rtol=1e-6, atol=1e-6)


def test_branch_not_taken_gives_no_nan_gradient():
    """select(c, a, b) differentiates the taken branch only, as OpenMM does (safe where)."""
    text = "select(step(x), sqrt(x), -x^2) + select(step(-y), 0, log(y))"
    points = np.array([[-0.5, -0.5, 0.0], [0.5, 0.5, 0.0], [-0.2, 0.3, 0.1]])
    _assert_matches(text, points)
    x = torch.tensor([-1.0, 1.0], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(compile_expression(text)({"x": x, "y": -x}).sum(), x)
    assert torch.isfinite(grad).all()


def test_twice_differentiable():
    x = torch.tensor([0.3, -1.2], dtype=torch.float64, requires_grad=True)
    energy = compile_expression("x^3 + sin(x); unused = log(-1)")({"x": x}).sum()
    (grad,) = torch.autograd.grad(energy, x, create_graph=True)
    (second,) = torch.autograd.grad(grad.sum(), x)
    torch.testing.assert_close(second, 6 * x.detach() - torch.sin(x.detach()))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(5)
    expression, function = _tabulated_case("continuous2d", rng)
    functions, _, _ = _openmm_compound(expression, rng.uniform(0, 1, size=(2, 3)), {"f": function})
    text = f"{expression} + select(step(x1), sqrt(x1), 0) * distance(p1, p2) + dihedral(p1, p2, p3, p4)"
    compiled = compile_expression(text, functions, particle_functions=True)
    p = {f"p{k}": torch.tensor(rng.uniform(-0.5, 1.5, size=(8, 3))) for k in range(1, 5)}
    cpu = compiled(p)
    cuda = compiled({k: v.cuda() for k, v in p.items()})
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, rtol=1e-10, atol=1e-10)
