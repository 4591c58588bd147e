"""OpenMM's Lepton expression language (custom-force energy expressions) compiled into batched torch."""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor

from ...errors import BgflowError, UnsupportedForceError
from ...geometry import openmm_angle, openmm_dihedral
from .tabulated import TabulatedFunction, tabulated_function, tabulated_functions

__all__ = [
    "PARTICLE_FUNCTIONS",
    "SUPPORTED_FUNCTIONS",
    "CompiledExpression",
    "ExpressionSyntaxError",
    "TabulatedFunction",
    "compile_expression",
    "tabulated_functions",
]


class ExpressionSyntaxError(BgflowError, ValueError):
    """An energy expression does not parse (Lepton grammar); the message quotes the expression."""


Value = Tensor | float


def _tensors(*args: Value) -> list[Tensor]:
    """Python floats among ``args`` as 0-d tensors of the dtype and device of the first tensor among them."""
    like = next(a for a in args if isinstance(a, Tensor))
    return [a if isinstance(a, Tensor) else torch.tensor(a, dtype=like.dtype, device=like.device) for a in args]


def _step(x: Tensor) -> Tensor:
    return (x >= 0).to(x.dtype)


def _delta(x: Tensor) -> Tensor:
    return (x == 0).to(x.dtype)


def _min(a: Value, b: Value) -> Tensor:
    # std::min, with Lepton's derivative (d/db at a tie).
    a, b = _tensors(a, b)
    return torch.where(b <= a, b, a)


def _max(a: Value, b: Value) -> Tensor:
    # std::max, with Lepton's derivative (d/da at a tie).
    a, b = _tensors(a, b)
    return torch.where(a < b, b, a)


def _abs(x: Tensor) -> Tensor:
    # Lepton's derivative of abs at 0 is +1.
    return torch.where(x >= 0, x, -x)


def _atan2(a: Value, b: Value) -> Tensor:
    return torch.atan2(*_tensors(a, b))


def _select(condition: Tensor, a: Value, b: Value) -> Tensor:
    condition, a, b = _tensors(condition, a, b)
    return torch.where(condition != 0, a, b)


def _pow(a: Value, b: Value) -> Tensor:
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return torch.pow(a, b)
    return torch.pow(torch.tensor(a, dtype=torch.float64), b)


def _power_constant(a: Tensor, exponent: float) -> Tensor:
    """``a ** exponent`` for a constant exponent; integer exponents up to 16 in magnitude by repeated squaring, as
    Lepton's PowerConstant evaluates them (and several times faster than ``torch.pow`` on CPU, forward and
    backward)."""
    if not (float(exponent).is_integer() and 0 < abs(exponent) <= 16):
        return torch.pow(a, exponent)
    n = abs(int(exponent))
    base = a if exponent > 0 else 1.0 / a
    result = None
    while n:
        if n & 1:
            result = base if result is None else result * base
        n >>= 1
        if n:
            base = base * base
    return result


def _vector(*coordinates: Value) -> Tensor:
    return torch.stack(torch.broadcast_tensors(*_tensors(*coordinates)), dim=-1)


def _distance(p1: Tensor, p2: Tensor) -> Tensor:
    d = p2 - p1
    return (d * d).sum(dim=-1).sqrt()


#: Lepton's built-in functions: name -> (number of arguments, torch implementation).
_BUILTINS: dict[str, tuple[int, Callable[..., Tensor]]] = {
    "sqrt": (1, torch.sqrt),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "sin": (1, torch.sin),
    "cos": (1, torch.cos),
    "sec": (1, lambda x: 1.0 / torch.cos(x)),
    "csc": (1, lambda x: 1.0 / torch.sin(x)),
    "tan": (1, torch.tan),
    "cot": (1, lambda x: 1.0 / torch.tan(x)),
    "asin": (1, torch.asin),
    "acos": (1, torch.acos),
    "atan": (1, torch.atan),
    "atan2": (2, _atan2),
    "sinh": (1, torch.sinh),
    "cosh": (1, torch.cosh),
    "tanh": (1, torch.tanh),
    "erf": (1, torch.erf),
    "erfc": (1, torch.erfc),
    "step": (1, _step),
    "delta": (1, _delta),
    "square": (1, lambda x: x * x),
    "cube": (1, lambda x: x * x * x),
    "recip": (1, lambda x: 1.0 / x),
    "min": (2, _min),
    "max": (2, _max),
    "abs": (1, _abs),
    "floor": (1, torch.floor),
    "ceil": (1, torch.ceil),
    "select": (3, _select),
}

#: Geometry functions of CustomCompoundBondForce / CustomCentroidBondForce expressions (``particle_functions``):
#: name -> (number of arguments, whether the arguments are particles).
PARTICLE_FUNCTIONS: dict[str, tuple[int, bool]] = {
    "distance": (2, True),
    "angle": (3, True),
    "dihedral": (4, True),
    "pointdistance": (6, False),
    "pointangle": (9, False),
    "pointdihedral": (12, False),
}
_GEOMETRY = {2: _distance, 3: openmm_angle, 4: openmm_dihedral}

#: Every function name the compiler accepts (tabulated functions come on top, under their own names).
SUPPORTED_FUNCTIONS: tuple[str, ...] = tuple(_BUILTINS) + tuple(PARTICLE_FUNCTIONS)

#: Functions refused by name, with the reason.
_REFUSED = {
    "periodicdistance": "it needs periodic boundary conditions, and TorchForceField models non-periodic Systems only",
}

# Operators and the internal operations of Lepton's simplifier (ADD_CONSTANT, MULTIPLY_CONSTANT, POWER_CONSTANT).
_OPERATORS: dict[str, Callable[..., Value]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "^": _pow,
    "neg": lambda a: -a,
}
_PRECEDENCE = {"+": 0, "-": 0, "*": 1, "/": 1, "^": 3}
_RIGHT_ASSOCIATIVE = {"^"}
_UNARY_MINUS_PRECEDENCE = 2


class _Node:
    """One interned node of an expression DAG: structurally equal nodes are the same object."""

    __slots__ = ("op", "args", "value")

    def __init__(self, op: str, args: tuple[_Node, ...], value: Any) -> None:
        self.op = op  # "const", "var", an operator, "addc"/"mulc"/"powc", a function name, "tab", "geom"
        self.args = args
        self.value = value  # the constant, the variable name, the function name, or the folded constant operand

    def __repr__(self) -> str:
        if self.op in ("const", "var"):
            return str(self.value)
        return f"{self.op}[{self.value}]({', '.join(map(repr, self.args))})"


class _Graph:
    """Builds interned nodes and applies Lepton's constant folding and simplifications."""

    def __init__(self, functions: Mapping[str, TabulatedFunction]) -> None:
        self._table: dict[tuple, _Node] = {}
        self._functions = functions

    def node(self, op: str, args: tuple[_Node, ...] = (), value: Any = None) -> _Node:
        # Floats by bit pattern: -0.0 and 0.0 stay apart (1/-0.0 is -inf), NaN equals itself (Lepton's optimizer
        # never stops on an expression holding a NaN constant; this one does).
        key_value = struct.pack("<d", value) if isinstance(value, float) else value
        key = (op, key_value, tuple(id(a) for a in args))
        if key not in self._table:
            self._table[key] = _Node(op, args, value)
        return self._table[key]

    def const(self, value: float) -> _Node:
        return self.node("const", (), float(value))

    def fold(self, node: _Node) -> _Node:
        """Lepton's ``precalculateConstantSubexpressions``: subtrees without variables become constants."""
        if not node.args:
            return node
        return self._folded(node.op, tuple(self.fold(a) for a in node.args), node.value)

    def _folded(self, op: str, args: tuple[_Node, ...], value: Any) -> _Node:
        node = self.node(op, args, value)
        if args and op != "geom" and all(a.op == "const" for a in args):
            constants = [torch.tensor(a.value, dtype=torch.float64) for a in args]
            return self.const(float(_operation(node, self._functions)(*constants)))
        return node

    def simplify(self, node: _Node) -> _Node:
        """Lepton's ``ParsedExpression::optimize`` rewrites, repeated until nothing changes.

        They change values where IEEE arithmetic and algebra disagree, e.g. ``0*x`` is 0 for infinite x,
        ``x/x`` is 1 at 0 and ``square(sqrt(x))`` is x for negative x; OpenMM evaluates the rewritten form.
        """
        while True:
            simpler = self._simplify(node, {})
            if simpler is node:
                return node
            node = simpler

    def _simplify(self, node: _Node, cache: dict[int, _Node]) -> _Node:
        if id(node) in cache:
            return cache[id(node)]
        args = tuple(self._simplify(a, cache) for a in node.args)
        result = self._rewrite(node.op, args, node.value)
        cache[id(node)] = result
        return result

    def _rewrite(self, op: str, c: tuple[_Node, ...], value: Any) -> _Node:  # noqa: C901 - one rule per branch
        n, k = self.node, self.const
        first = c[0].value if len(c) > 0 and c[0].op == "const" else None
        second = c[1].value if len(c) > 1 and c[1].op == "const" else None

        def is_(i: int, kind: str) -> bool:
            return c[i].op == kind

        if op == "+":
            if first is not None:
                return c[1] if first == 0.0 else n("addc", (c[1],), first)
            if second is not None:
                return c[0] if second == 0.0 else n("addc", (c[0],), second)
            if is_(1, "neg"):
                return n("-", (c[0], c[1].args[0]))
            if is_(0, "neg"):
                return n("-", (c[1], c[0].args[0]))
        elif op == "-":
            if c[0] is c[1]:
                return k(0.0)
            if first is not None and first == 0.0:
                return n("neg", (c[1],))
            if second is not None:
                return c[0] if second == 0.0 else n("addc", (c[0],), -second)
            if is_(1, "neg"):
                return n("+", (c[0], c[1].args[0]))
        elif op == "*":
            if first == 0.0 or second == 0.0:
                return k(0.0)
            if first == 1.0:
                return c[1]
            if second == 1.0:
                return c[0]
            if first is not None:
                if is_(1, "mulc"):
                    return n("mulc", c[1].args, first * c[1].value)
                return n("mulc", (c[1],), first)
            if second is not None:
                if is_(0, "mulc"):
                    return n("mulc", c[0].args, second * c[0].value)
                return n("mulc", (c[0],), second)
            if is_(0, "neg") and is_(1, "neg"):
                return n("*", (c[0].args[0], c[1].args[0]))
            if is_(0, "neg") and is_(1, "mulc"):
                return n("*", (c[0].args[0], n("mulc", c[1].args, -c[1].value)))
            if is_(1, "neg") and is_(0, "mulc"):
                return n("*", (n("mulc", c[0].args, -c[0].value), c[1].args[0]))
            if is_(0, "neg"):
                return n("neg", (n("*", (c[0].args[0], c[1])),))
            if is_(1, "neg"):
                return n("neg", (n("*", (c[0], c[1].args[0])),))
            if is_(1, "recip"):
                return n("/", (c[0], c[1].args[0]))
            if is_(0, "recip"):
                return n("/", (c[1], c[0].args[0]))
            if c[0] is c[1]:
                return n("square", (c[0],))
            if is_(0, "square") and c[0].args[0] is c[1]:
                return n("cube", (c[1],))
            if is_(1, "square") and c[1].args[0] is c[0]:
                return n("cube", (c[0],))
        elif op == "/":
            if c[0] is c[1]:
                return k(1.0)
            if first == 0.0:
                return k(0.0)
            if first == 1.0:
                return n("recip", (c[1],))
            if second == 1.0:
                return c[0]
            if second is not None:
                if is_(0, "mulc"):
                    return n("mulc", c[0].args, c[0].value / second)
                return n("mulc", (c[0],), 1.0 / second)
            if is_(0, "neg") and is_(1, "neg"):
                return n("/", (c[0].args[0], c[1].args[0]))
            if is_(1, "neg") and is_(0, "mulc"):
                return n("/", (n("mulc", c[0].args, -c[0].value), c[1].args[0]))
            if is_(0, "neg"):
                return n("neg", (n("/", (c[0].args[0], c[1])),))
            if is_(1, "neg"):
                return n("neg", (n("/", (c[0], c[1].args[0])),))
            if is_(1, "recip"):
                return n("*", (c[0], c[1].args[0]))
        elif op == "^":
            if first == 0.0:
                return k(0.0)
            if first == 1.0:
                return k(1.0)
            if second is not None:
                special = {0.0: None, 1.0: "id", -1.0: "recip", 2.0: "square", 3.0: "cube", 0.5: "sqrt"}
                if second in special:
                    name = special[second]
                    if name is None:
                        return k(1.0)
                    return c[0] if name == "id" else n(name, (c[0],))
                return n("powc", (c[0],), second)
        elif op == "neg":
            if is_(0, "mulc"):
                return n("mulc", c[0].args, -c[0].value)
            if first is not None:
                return k(-first)
            if is_(0, "neg"):
                return c[0].args[0]
        elif op == "mulc":
            if is_(0, "mulc"):
                return n("mulc", c[0].args, value * c[0].value)
            if first is not None:
                return k(value * first)
            if is_(0, "neg"):
                return n("mulc", c[0].args, -value)
        elif op == "sqrt":
            if is_(0, "square"):
                return n("abs", c[0].args)
        elif op == "square":
            if is_(0, "sqrt"):
                return c[0].args[0]
        elif op == "select":
            if first is not None:  # a constant condition picks its branch (Lepton evaluates the same value)
                return c[1] if first != 0.0 else c[2]
            if c[1] is c[2]:
                return c[1]
        return self._folded(op, c, value)  # rewrites can leave constant arguments (x - x is 0)


def _operation(node: _Node, functions: Mapping[str, TabulatedFunction]) -> Callable[..., Tensor]:
    """The torch function of an inner node (not of variables, constants or geometry functions)."""
    op = node.op
    if op in _OPERATORS:
        return _OPERATORS[op]
    if op == "addc":
        return lambda a, v=node.value: a + v
    if op == "mulc":
        return lambda a, v=node.value: a * v
    if op == "powc":
        return lambda a, v=node.value: _power_constant(a, v)
    if op == "tab":
        return functions[node.value]
    if op == "point":
        return _point_function(_GEOMETRY[len(node.args) // 3])
    return _BUILTINS[op][1]


def _point_function(geometry: Callable[..., Tensor]) -> Callable[..., Tensor]:
    """``pointdistance``-style: ``geometry`` of points given as consecutive (x, y, z) arguments."""

    def point(*coordinates: Value) -> Tensor:
        return geometry(*(_vector(*coordinates[i : i + 3]) for i in range(0, len(coordinates), 3)))

    return point


class _Parser:
    """A port of Lepton's ``Parser``: tokenizer, definitions after ``;`` and precedence climbing."""

    def __init__(
        self,
        text: str,
        graph: _Graph,
        functions: Mapping[str, TabulatedFunction],
        particle_functions: bool,
    ) -> None:
        self.text = text
        self.graph = graph
        self.functions = functions
        self.particle_functions = particle_functions

    def error(self, message: str) -> ExpressionSyntaxError:
        return ExpressionSyntaxError(f'cannot parse expression "{self.text}": {message}')

    def parse(self) -> _Node:
        # Definitions are split off from the end; each may use the definitions that follow it in the text.
        parts = self.text.split(";")
        definitions: dict[str, _Node] = {}
        for part in reversed(parts[1:]):
            part = part.strip()
            if not part:
                continue
            name, equals, body = part.partition("=")
            name = name.strip()
            if not equals or not name:
                raise self.error(f"definition {part!r} does not have the form name = expression")
            definitions[name] = self._parse_all(body, definitions, f"definition of {name}")
        return self._parse_all(parts[0], definitions, "expression")

    def _parse_all(self, text: str, definitions: dict[str, _Node], what: str) -> _Node:
        self.tokens = _tokenize(text)
        self.pos = 0
        self.definitions = definitions
        node = self._precedence(0)
        if self.pos != len(self.tokens):
            raise self.error(f"unexpected text at end of {what}: {self.tokens[self.pos][1]!r}")
        return node

    def _precedence(self, precedence: int) -> _Node:
        if self.pos == len(self.tokens):
            raise self.error("unexpected end of expression")
        kind, text = self.tokens[self.pos]
        self.pos += 1
        g = self.graph
        if kind == "number":
            try:
                result = g.const(float(text))
            except ValueError:
                raise self.error(f"malformed number {text!r}") from None
        elif kind == "variable":
            result = self.definitions[text] if text in self.definitions else g.node("var", (), text)
        elif kind == "(":
            result = self._precedence(0)
            if self.pos == len(self.tokens) or self.tokens[self.pos][0] != ")":
                raise self.error("unbalanced parentheses")
            self.pos += 1
        elif kind == "function":
            args = [self._precedence(0)]
            while self.pos < len(self.tokens) and self.tokens[self.pos][0] == ",":
                self.pos += 1
                args.append(self._precedence(0))
            if self.pos == len(self.tokens) or self.tokens[self.pos][0] != ")":
                raise self.error("unbalanced parentheses")
            self.pos += 1
            result = self._function(text, args)
        elif kind == "operator" and text == "-":
            result = g.node("neg", (self._precedence(_UNARY_MINUS_PRECEDENCE),))
        else:
            raise self.error(f"unexpected token {text!r}")
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] == "operator":
            op = self.tokens[self.pos][1]
            if _PRECEDENCE[op] < precedence:
                return result
            self.pos += 1
            right = self._precedence(_PRECEDENCE[op] + (0 if op in _RIGHT_ASSOCIATIVE else 1))
            result = g.node(op, (result, right))
        return result

    def _function(self, name: str, args: list[_Node]) -> _Node:
        g = self.graph
        if name in self.functions:
            expected = self.functions[name].n_args
            op, value = "tab", name
        elif self.particle_functions and name in PARTICLE_FUNCTIONS:
            expected, of_particles = PARTICLE_FUNCTIONS[name]
            if of_particles:
                bad = [a for a in args if a.op != "var"]
                if bad:
                    raise self.error(f"the arguments of {name} must be particle names such as p1, got {bad[0]!r}")
                op, value = "geom", name
            else:
                op, value = "point", name
        elif name in _BUILTINS:
            expected = _BUILTINS[name][0]
            op, value = name, None
        elif name in _REFUSED:
            raise UnsupportedForceError(f'expression "{self.text}" uses {name}, which is unsupported: {_REFUSED[name]}')
        else:
            extra = f", tabulated functions {', '.join(sorted(self.functions))}" if self.functions else ""
            geometry = ", ".join(PARTICLE_FUNCTIONS)
            particle = "" if self.particle_functions else f" (and, in compound/centroid bond forces, {geometry})"
            raise UnsupportedForceError(
                f'expression "{self.text}" uses the function {name!r}, which has no torch version; supported: '
                f"{', '.join(_BUILTINS)}{particle}{extra}"
            )
        if len(args) != expected:
            raise self.error(f"{name} takes {expected} arguments, got {len(args)}")
        return g.node(op, tuple(args), value)


def _tokenize(text: str) -> list[tuple[str, str]]:
    """Lepton's tokens: (kind, text) with kind number, operator, variable, function (text is the name), (, ), ','."""
    tokens: list[tuple[str, str]] = []
    pos, n = 0, len(text)
    digits = "0123456789"
    while pos < n:
        c = text[pos]
        if c in "(),":
            tokens.append((c, c))
            pos += 1
        elif c in _PRECEDENCE:
            tokens.append(("operator", c))
            pos += 1
        elif c.isspace():
            pos += 1
        elif c == "." or c in digits:
            end, decimal, exponent = pos + 1, c == ".", False
            while end < n:
                c = text[end]
                if c in digits:
                    pass
                elif c == "." and not decimal:
                    decimal = True
                elif c in "eE" and not exponent:
                    exponent = True
                    if end + 1 < n and text[end + 1] in "+-":
                        end += 1
                else:
                    break
                end += 1
            tokens.append(("number", text[pos:end]))
            pos = end
        else:
            end = pos
            while end < n and not (text[end] in "(),+-*/^" or text[end].isspace()):
                end += 1
            if end < n and text[end] == "(":
                tokens.append(("function", text[pos:end]))
                end += 1
            else:
                tokens.append(("variable", text[pos:end]))
            pos = end
    return tokens


class CompiledExpression:
    """A Lepton expression compiled into torch; ``expr(values)`` evaluates it elementwise with broadcasting.

    text: the expression as given. variables: the free variables it reads after Lepton's simplification
    (definitions after ``;`` are inlined, not listed). With ``particle_functions`` the particle names (e.g. ``p1``,
    read by ``distance(p1, p2)`` and by the coordinates ``x1``, ``y1``, ``z1``) are listed in ``particles`` and
    in ``variables``. Evaluation is differentiable (forces come from autograd) and follows the tensors' dtype
    and device.
    """

    def __init__(
        self,
        text: str,
        root: _Node,
        functions: Mapping[str, TabulatedFunction],
        particle_prefix: str | None,
    ) -> None:
        self.text = text
        self._functions = dict(functions)
        self._coordinate = re.compile(r"([xyz])(\d+)$") if particle_prefix is not None else None
        self._prefix = particle_prefix
        self._root = root
        self._code: list[tuple[int, Callable[..., Any], tuple[int, ...]]] = []
        self._registers: list[Any] = [None]  # register 0 holds the values mapping
        self._memo: dict[tuple[int, int], int] = {}
        self._loads: dict[tuple[str, int], int] = {}
        self._reads: set[str] = set()
        self._particles: set[str] = set()
        self._output = self._emit(root, -1)
        self.variables: frozenset[str] = frozenset(self._reads)
        self.particles: frozenset[str] = frozenset(self._particles)
        del self._memo, self._loads

    def __reduce__(self) -> tuple[Any, ...]:
        # The compiled program holds closures, which do not pickle: pickle the source and compile it again.
        particles = self._prefix is not None
        kwargs = {"particle_prefix": self._prefix} if particles else {}
        return (_recompile, (self.text, self._functions, particles, kwargs))

    def __repr__(self) -> str:
        return f"CompiledExpression({self.text!r})"

    # Code generation: a straight-line program over registers, one instruction per distinct (node, gate).
    def _register(self, value: Any = None) -> int:
        self._registers.append(value)
        return len(self._registers) - 1

    def _instruction(self, fn: Callable[..., Any], args: tuple[int, ...]) -> int:
        out = self._register()
        self._code.append((out, fn, args))
        return out

    def _load(self, name: str, particle: bool, gate: int) -> int:
        key = (name, gate)
        if key not in self._loads:
            self._reads.add(name)
            if particle:
                self._particles.add(name)
            out = self._instruction(lambda values, name=name: values[name], (0,))
            if gate >= 0:
                out = self._instruction(_gate_particle if particle else _gate, (out, gate))
            self._loads[key] = out
        return self._loads[key]

    def _emit(self, node: _Node, gate: int) -> int:
        key = (id(node), gate)
        if key in self._memo:
            return self._memo[key]
        if node.op == "const":
            out = self._register(node.value)
        elif node.op == "var":
            match = self._coordinate.match(node.value) if self._coordinate is not None else None
            if match:
                axis = "xyz".index(match.group(1))
                particle = self._load(f"{self._prefix}{match.group(2)}", True, gate)
                out = self._instruction(lambda p, axis=axis: p[..., axis], (particle,))
            else:
                out = self._load(node.value, False, gate)
        elif node.op == "geom":
            args = tuple(self._load(a.value, True, gate) for a in node.args)
            out = self._instruction(_GEOMETRY[len(args)], args)
        elif node.op == "select":
            # Safe where: each branch reads its variables detached where the other branch is taken, so a
            # non-finite derivative inside the branch not taken cannot turn the gradient into NaN.
            condition = self._emit(node.args[0], gate)
            gate_true = self._instruction(_branch_mask(True), (condition, gate) if gate >= 0 else (condition,))
            gate_false = self._instruction(_branch_mask(False), (condition, gate) if gate >= 0 else (condition,))
            taken = self._emit(node.args[1], gate_true)
            other = self._emit(node.args[2], gate_false)
            out = self._instruction(_select, (condition, taken, other))
        else:
            args = tuple(self._emit(a, gate) for a in node.args)
            out = self._instruction(_operation(node, self._functions), args)
        self._memo[key] = out
        return out

    def __call__(self, values: Mapping[str, Tensor | float]) -> Tensor:
        """Evaluate at ``values``: variable name -> tensor or float; particle names -> positions ``(..., 3)``.

        All tensors broadcast together (particle tensors without their last axis); they should share one float
        dtype and device, which the result takes (Python floats are cast to it; float64 on CPU if no tensor is
        given). Returns a tensor of the broadcast shape of all tensors passed (used or not).
        """
        missing = self.variables.difference(values)
        if missing:
            raise KeyError(f'expression "{self.text}" needs values for {", ".join(sorted(missing))}')
        like = next((v for v in values.values() if isinstance(v, Tensor) and v.is_floating_point()), None)
        dtype = like.dtype if like is not None else torch.float64
        device = like.device if like is not None else torch.device("cpu")
        env: dict[str, Tensor] = {}
        shapes = []
        for name, value in values.items():
            if not isinstance(value, Tensor):
                value = torch.tensor(float(value), dtype=dtype, device=device)
            env[name] = value
            is_particle = name in self._particles or (self._prefix is not None and _is_particle(name, self._prefix))
            shapes.append(value.shape[:-1] if is_particle else value.shape)
        registers = list(self._registers)
        registers[0] = env
        for out, fn, args in self._code:
            registers[out] = fn(*[registers[a] for a in args])
        result = registers[self._output]
        if not isinstance(result, Tensor):
            result = torch.tensor(result, dtype=dtype, device=device)
        shape = torch.broadcast_shapes(result.shape, *shapes)
        return result if result.shape == shape else result.expand(shape)


def _is_particle(name: str, prefix: str) -> bool:
    return name.startswith(prefix) and name[len(prefix) :].isdigit()


def _gate(value: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask, value, value.detach()) if value.requires_grad else value


def _gate_particle(value: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.unsqueeze(-1), value, value.detach()) if value.requires_grad else value


def _branch_mask(taken: bool) -> Callable[..., Tensor]:
    def mask(condition: Tensor, outer: Tensor | None = None) -> Tensor:
        inner = condition != 0 if taken else condition == 0
        return inner if outer is None else inner & outer

    return mask


def compile_expression(
    expression: str,
    functions: Mapping[str, Any] | None = None,
    particle_functions: bool = False,
    *,
    particle_prefix: str = "p",
) -> CompiledExpression:
    """Compile an OpenMM custom-force energy expression (Lepton syntax) into a batched torch function.

    functions: tabulated functions by name, ``TabulatedFunction`` or ``openmm.*DFunction`` objects (see
        ``tabulated_functions(force)``); they take precedence over built-in functions of the same name, as in OpenMM.
    particle_functions: accept ``distance(p1, p2)``, ``angle(p1, p2, p3)``, ``dihedral(p1, p2, p3, p4)``,
        ``pointdistance``/``pointangle``/``pointdihedral`` (coordinates as arguments) and the coordinates
        ``x1, y1, z1, ...`` of CustomCompoundBondForce; particle k is read from ``values[f"{particle_prefix}{k}"]``,
        shape (..., 3), nm (use ``particle_prefix="g"`` for CustomCentroidBondForce groups).
    Raises ``ExpressionSyntaxError`` for text that does not parse and ``UnsupportedForceError`` naming an unknown
    or unsupported function (e.g. ``periodicdistance``).
    """
    converted: dict[str, TabulatedFunction] = {}
    for name, function in (functions or {}).items():
        converted[name] = function if isinstance(function, TabulatedFunction) else tabulated_function(function, name)
    graph = _Graph(converted)
    root = _Parser(expression, graph, converted, particle_functions).parse()
    root = graph.simplify(graph.fold(root))
    return CompiledExpression(expression, root, converted, particle_prefix if particle_functions else None)


def _recompile(
    text: str, functions: Mapping[str, TabulatedFunction], particles: bool, kwargs: dict
) -> CompiledExpression:
    """``compile_expression`` with positional arguments for ``pickle`` (see ``CompiledExpression.__reduce__``)."""
    return compile_expression(text, functions, particles, **kwargs)
