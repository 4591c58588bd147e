"""The catalogue (``bgflow_se3.systems``) is a leaf and the drivers (``bgflow_se3.simulate``) import one way.

Issue 28: ``systems`` imports nothing of ``bgflow_se3`` but ``errors`` and the torch-only ``geometry`` (its old
driver paths reach ``simulate`` lazily, by name, on first use), nothing in ``systems`` or ``simulate`` imports in a
circle, and every name and module path users held before the split still imports.
"""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bgflow_se3"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The bgflow_se3 modules that ``path`` imports, anywhere in it (top level or inside functions)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("bgflow_se3")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if not module.startswith("bgflow_se3"):
                continue
            found.add(module)
            for alias in node.names:  # ``from . import replica_exchange``: a submodule
                candidate = PACKAGE.parent / (module + "." + alias.name).replace(".", "/")
                if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
                    found.add(module + "." + alias.name)
    return found


def _graph() -> dict[str, set[str]]:
    files = sorted((PACKAGE / "systems").glob("*.py")) + sorted((PACKAGE / "simulate").glob("*.py"))
    return {_module_name(path): _imports(path) for path in files}


#: what the catalogue may import of the package: the errors and the dependency-free geometry (torch only)
CATALOGUE_MAY_IMPORT = {"bgflow_se3.errors", "bgflow_se3.geometry"}


def test_the_catalogue_imports_nothing_of_the_package_but_errors():
    for module, imported in _graph().items():
        if module.startswith("bgflow_se3.systems"):
            outside = {m for m in imported if not m.startswith("bgflow_se3.systems") and m not in CATALOGUE_MAY_IMPORT}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_systems_and_simulate_import_without_circles():
    graph = _graph()
    state: dict[str, int] = {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                raise AssertionError("import circle: " + " -> ".join([*path, module, target]))
            if target not in state:
                visit(target, [*path, module])
        state[module] = 2

    for module in graph:
        if module not in state:
            visit(module, [])


def test_importing_the_catalogue_imports_no_driver():
    code = (
        "import sys, bgflow_se3.systems, bgflow_se3.systems.umbrella, bgflow_se3.systems.md; "
        "assert not [m for m in sys.modules if m.startswith('bgflow_se3.simulate')], 'drivers imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=PACKAGE.parent)


@pytest.mark.parametrize(
    "old, new, names",
    [
        ("bgflow_se3.systems.md", "bgflow_se3.simulate.aldp_md", ["default_md_dir", "load_aldp_md", "run_aldp_md"]),
        ("bgflow_se3.systems.seeded_md", "bgflow_se3.simulate.seeded_md", ["DEFAULT_SEEDS", "seeded_aldp_md"]),
        ("bgflow_se3.systems.particle_data", "bgflow_se3.simulate.particle_mcmc", ["load_particle_data", "remove_com"]),
        ("bgflow_se3.systems.pretrained", "bgflow_se3.simulate.pretrained", ["load_pretrained_aldp_flow"]),
        ("bgflow_se3.systems.replica_exchange", "bgflow_se3.simulate.replica_exchange", ["run_replica_exchange"]),
        ("bgflow_se3.systems.umbrella", "bgflow_se3.simulate.umbrella_sampling", ["run_umbrella", "load_windows"]),
        ("bgflow_se3.systems.umbrella", "bgflow_se3.simulate.umbrella_windows", ["UmbrellaConfig", "_dihedral"]),
        ("bgflow_se3.systems.umbrella", "bgflow_se3.systems.aldp_references", ["load_profile", "shipped_profile"]),
        ("bgflow_se3.systems.simulation", "bgflow_se3.simulate.openmm_langevin", ["reduced_energies"]),
        ("bgflow_se3.systems.particles", "bgflow_se3.systems.lennard_jones", ["lennard_jones_system"]),
        ("bgflow_se3.sampling.dihedrals", "bgflow_se3.sampling.torsion_setting", ["set_torsion", "torsion_angle"]),
        ("bgflow_se3.systems", "bgflow_se3.simulate", ["run_aldp_md", "load_particle_data", "make_particle_data"]),
    ],
)
def test_old_import_paths_give_the_new_objects(old, new, names):
    import importlib

    old_module, new_module = importlib.import_module(old), importlib.import_module(new)
    for name in names:
        assert getattr(old_module, name) is getattr(new_module, name)
    with pytest.raises(AttributeError):
        old_module.no_such_name  # noqa: B018
