import subprocess
import sys


def test_flow_train_reweight_never_import_openmm():
    code = (
        "import sys, bgflow_se3, bgflow_se3.flow, bgflow_se3.train, bgflow_se3.reweight; "
        "assert 'openmm' not in sys.modules, 'openmm was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_aldp_systems_load_as_shipped():
    from bgflow_se3.systems import load_aldp

    for solvent, gb in [("vacuum", False), ("implicit", True)]:
        aldp = load_aldp(solvent)
        names = {type(f).__name__ for f in aldp.system.getForces()}
        assert ("GBSAOBCForce" in names) == gb
        assert aldp.system.getNumParticles() == aldp.topology.getNumAtoms() == 22
        assert aldp.system.getNumConstraints() == 0
        assert not aldp.system.usesPeriodicBoundaryConditions()


def _module_imports(package: str) -> dict[str, list[tuple[str, str | None, int]]]:
    """Every module of ``package`` (a folder under the repository root) -> the imports it makes anywhere in its
    file (top level or inside functions), as (absolute module, imported name or None, line)."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = {}
    for path in sorted((root / package.replace(".", "/")).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        name = ".".join(parts)
        base = parts if is_package else parts[:-1]  # the package relative imports start from
        imports = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                imports += [(alias.name, None, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module
                imports += [(target, alias.name, node.lineno) for alias in node.names]
        modules[name] = imports
    return modules


def test_no_module_imports_a_private_name_from_another_file():
    modules = _module_imports("bgflow_se3.energy")
    offences = [
        f"{module}:{line} imports {name} from {target}"
        for module, imports in modules.items()
        for target, name, line in imports
        if target.startswith("bgflow_se3") and name and name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, "\n".join(offences)


def test_no_import_cycles_in_the_energy_package():
    modules = _module_imports("bgflow_se3.energy")
    graph = {}
    for module, imports in modules.items():
        edges = set()
        for target, name, _ in imports:
            if name is not None and f"{target}.{name}" in modules:  # from package import submodule
                edges.add(f"{target}.{name}")
            elif target in modules:
                edges.add(target)
        graph[module] = edges - {module}
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                cycles.append(" -> ".join([*path[path.index(other) :], other]))
            elif other not in state:
                visit(other, [*path, other])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "\n".join(cycles)
