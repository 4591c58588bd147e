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


def _module_imports(package: str, top_level_only: bool = False) -> dict[str, list[tuple[str, str | None, int]]]:
    """Every module of ``package`` (a folder under the repository root) -> the imports it makes in its file (top
    level or inside functions; only the module-level ones with ``top_level_only``: those outside any function,
    ``if TYPE_CHECKING`` blocks included), as (absolute module, imported name or None, line)."""
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
        tree = ast.parse(path.read_text(), str(path))
        if top_level_only:
            nodes, stack = [], list(tree.body)
            while stack:
                node = stack.pop()
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                    continue
                nodes.append(node)
                stack.extend(ast.iter_child_nodes(node))
        else:
            nodes = list(ast.walk(tree))
        imports = []
        for node in nodes:
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


def _private_imports(package: str) -> list[str]:
    """Imports in ``package`` of a private name (``_x``) from another file, or of a private module (``a._b``) from
    outside the package ``a`` that holds it (its subpackages count as inside): "module:line imports name from x"."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    modules = _module_imports(package)
    offences = []
    for module, imports in modules.items():
        is_package = (root / module.replace(".", "/") / "__init__.py").exists()
        home = module if is_package else module.rpartition(".")[0]
        for target, name, line in imports:
            if not target.startswith("bgflow_se3"):
                continue
            reached = f"{target}.{name}" if name and f"{target}.{name}" in modules else target  # a submodule?
            private_name = reached == target != module and name and name.startswith("_") and not name.startswith("__")
            parts = reached.split(".")
            private_parents = [".".join(parts[:i]) for i, part in enumerate(parts) if part.startswith("_")]
            foreign = any(not f"{home}.".startswith(f"{parent}.") for parent in private_parents)
            if private_name or foreign:
                offences.append(f"{module}:{line} imports {name or target} from {target}")
    return offences


def test_no_module_imports_a_private_name_from_another_file():
    """Package-wide (``bgflow_se3.train`` included): no ``from x import _name`` across files, and nothing imported
    from a private module (``a._b``) by a module outside the package ``a`` that holds it."""
    offences = _private_imports("bgflow_se3")
    assert not offences, "\n".join(offences)


def _cycles(modules: dict[str, list[tuple[str, str | None, int]]]) -> list[str]:
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
    return cycles


def test_no_import_cycles_in_the_energy_package():
    """The energy package imports one way also inside functions (no lazy imports that close a circle)."""
    cycles = _cycles(_module_imports("bgflow_se3.energy"))
    assert not cycles, "\n".join(cycles)


def test_no_import_cycles_in_the_package():
    """No circle among the package's imports, counting those inside functions too (a lazy import may not close one);
    at module level alone, where a circle would fail at import time, there is none either."""
    assert not _cycles(_module_imports("bgflow_se3", top_level_only=True))
    cycles = _cycles(_module_imports("bgflow_se3"))
    assert not cycles, "\n".join(cycles)
