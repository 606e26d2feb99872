"""Walk a value through the package's modules ("the house") and count rooms, climbs and returns.

Two walks, both from a command's entry:

- ``spec``: the grid spec from ``infosft compare`` (``infosft.cli.compare.run``, the value
  ``spec = read_grid(...)``);
- ``p_bar``: ``--p-bar`` from ``infosft train`` (``infosft.cli.train.run``, the value
  ``args.p_bar``) down to the loss's chunk loop in ``infosft.losses``.

Method (static, ``ast`` only; nothing is imported or run):

1. Every ``.py`` file under ``--src`` (default ``src/infosft``) is a module. For each module the
   script records its functions (``f``, and ``Class.m`` for methods), its classes and their
   bases, and every import in the file (at any depth, a function-level import included) as a
   name -> (module, attribute) map; ``from infosft.x import f`` is followed through package
   ``__init__`` re-exports (imports, and lazy ``{"f": "infosft.x.y"}`` tables read by a module
   ``__getattr__``) to the module that defines ``f``.
2. A call is resolved by name: ``f(...)`` to a function or class defined in or imported into the
   module, ``m.f(...)`` for an imported module ``m``, ``self.m(...)``/``cls.m(...)`` to the
   class's own method (or a base class's in the package). A call to a class enters its
   ``__init__`` or ``__post_init__`` when it defines one, else only its module. Calls on other
   objects (``spec.cells()``) and calls into other packages are not resolved.
3. Value view: inside a function the value is a set of dotted names (``spec``, ``args.p_bar``).
   A name assigned from an expression that reads the value holds it too (flow-insensitive,
   to a fixed point; ``for``/``with`` targets and walrus included). A call that passes the value
   (as an argument, or an object one of whose attributes holds it) is followed, with the
   callee's parameters bound to what they receive; its result holds the value. ``self.x = v``
   with ``v`` holding the value marks attribute ``x`` of that class, and every method of the
   class that reads ``self.x`` is entered too (a framework such as the HF Trainer calls them);
   a class without its own ``__init__`` (a dataclass) built from the value marks all its
   attributes. Each (function, value names) pair is walked once.
4. Direct view: the value view, except that a call's result does not hold the value (only
   names read from it, its attributes and expressions of them do): the value as an object,
   not everything computed from it.
5. All-calls view: every resolved call from the entry on, each function walked once.

Counting, along the walk in source order (depth first):

- a **room** is a module (file) the walk enters; rooms are counted once each;
- a **climb** is a call from a module to a module higher in the layer order
  ``files < objectives < losses < models < training < evaluation < experiments < integrations
  < cli`` (``extras``, ``__init__`` and ``__main__`` of the package count as ``files``);
- a **return** is a call that enters, from another module, a module already entered
  (``returns`` counts every such call, ``distinct`` each (caller, callee) module pair once);
- ``ups`` counts where the walk, read as the sequence of modules it enters, goes to a higher
  layer than the module entered just before (it came back up a call chain to go elsewhere);
- ``calls`` counts the resolved calls walked.

In the all-calls view a class that is built has every method entered (the value view enters
only those that read an attribute holding the value).

Run it from the repository root::

    python benchmarks/walk.py            # both walks, both views
    python benchmarks/walk.py --src PATH --walk p_bar --trace
"""

from __future__ import annotations

import argparse
import ast
import itertools
from dataclasses import dataclass, field
from pathlib import Path

LAYERS = [
    "files",
    "objectives",
    "losses",
    "models",
    "training",
    "evaluation",
    "experiments",
    "integrations",
    "cli",
]
PACKAGE = "infosft"

# name: (entry module, entry function, the value's names there, a function to show the path to)
WALKS = {
    "spec": ("infosft.cli.compare", "run", {"spec"}, "infosft.experiments.grid_runner.train_cell"),
    "p_bar": ("infosft.cli.train", "run", {"args.p_bar"}, "infosft.losses.fused._chunk_loop"),
}


def layer(module: str) -> int:
    parts = module.split(".")
    name = parts[1] if len(parts) > 1 else "files"
    return LAYERS.index(name) if name in LAYERS else 0


@dataclass
class Module:
    name: str
    tree: ast.Module
    functions: dict[str, ast.FunctionDef | ast.AsyncFunctionDef] = field(default_factory=dict)
    classes: dict[str, ast.ClassDef] = field(default_factory=dict)
    imports: dict[str, tuple[str, str | None]] = field(default_factory=dict)


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def load(src: Path) -> dict[str, Module]:
    modules = {}
    for path in sorted(src.rglob("*.py")):
        name = module_name(path, src)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        mod = Module(name, tree)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                mod.functions[node.name] = node
            elif isinstance(node, ast.ClassDef):
                mod.classes[node.name] = node
                for item in node.body:
                    if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                        mod.functions[f"{node.name}.{item.name}"] = item
        for node in tree.body:
            # A lazy re-export table, {"name": "infosft.module"}, read by a module __getattr__.
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                for key, val in zip(node.value.keys, node.value.values, strict=True):
                    if (
                        isinstance(key, ast.Constant)
                        and isinstance(val, ast.Constant)
                        and isinstance(val.value, str)
                        and val.value.startswith(PACKAGE + ".")
                    ):
                        mod.imports[key.value] = (val.value, key.value)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname:
                        mod.imports[alias.asname] = (alias.name, None)
                    else:
                        top = alias.name.split(".")[0]
                        mod.imports[top] = (top, None)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")
                    anchor = anchor[: len(anchor) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for alias in node.names:
                    mod.imports[alias.asname or alias.name] = (base, alias.name)
        modules[name] = mod
    return modules


def dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        inner = dotted(node.value)
        return f"{inner}.{node.attr}" if inner else None
    return None


class House:
    def __init__(self, modules: dict[str, Module]):
        self.modules = modules

    def definition(self, module: str, name: str, depth: int = 0) -> tuple[str, str] | None:
        """(module, function or class) that ``name`` in ``module`` refers to, or None."""
        mod = self.modules.get(module)
        if mod is None or depth > 10:
            return None
        if name in mod.functions or name in mod.classes:
            return module, name
        if name in mod.imports:
            target, attr = mod.imports[name]
            if attr is None:
                return None
            if f"{target}.{attr}" in self.modules:
                return None  # a module, not a callable
            return self.definition(target, attr, depth + 1)
        return None

    def module_alias(self, module: str, name: str) -> str | None:
        mod = self.modules[module]
        if name not in mod.imports:
            return None
        target, attr = mod.imports[name]
        full = f"{target}.{attr}" if attr else target
        return full if full in self.modules else None

    def method(self, module: str, cls: str, name: str) -> tuple[str, str] | None:
        """``cls.name`` in the package, looked up through base classes defined in it."""
        mod = self.modules[module]
        if f"{cls}.{name}" in mod.functions:
            return module, f"{cls}.{name}"
        node = mod.classes.get(cls)
        for base in node.bases if node else []:
            base_name = dotted(base)
            found = base_name and self.definition(module, base_name)
            if found and found[1] in self.modules[found[0]].classes:
                hit = self.method(found[0], found[1], name)
                if hit:
                    return hit
        return None

    def resolve(self, module: str, owner: str | None, func: ast.AST) -> tuple[str, str] | None:
        name = dotted(func)
        if name is None:
            return None
        head, _, rest = name.partition(".")
        if not rest:
            return self.definition(module, head)
        if head in ("self", "cls") and owner and "." not in rest:
            return self.method(module, owner, rest)
        target = self.module_alias(module, head)
        if target and "." not in rest:
            return self.definition(target, rest)
        return None

    def entered(self, module: str, name: str) -> tuple[str, str | None]:
        """The function a call to ``name`` runs: a class's ``__init__``/``__post_init__``."""
        mod = self.modules[module]
        if name in mod.classes:
            for init in ("__init__", "__post_init__"):
                hit = self.method(module, name, init)
                if hit:
                    return hit
            return module, None
        return module, name


def reads(expr: ast.AST, value: set[str]) -> bool:
    """``expr`` reads the value: a dotted name in it is one of ``value`` or starts with one."""
    for node in ast.walk(expr):
        name = dotted(node)
        if name and any(name == v or name.startswith(v + ".") for v in value):
            return True
    return False


# The "direct" view sets this False: a call's result does not hold the value it was passed.
RESULTS_HOLD_THE_VALUE = True


def holds(expr: ast.AST, value: set[str]) -> bool:
    """``expr`` reads the value, or calls something with it (the result is derived from it)."""
    if reads(expr, value):
        return True
    if not RESULTS_HOLD_THE_VALUE:
        return False
    for node in ast.walk(expr):
        if isinstance(node, ast.Call):
            args = [*node.args, *(kw.value for kw in node.keywords)]
            if any(carried(a.value if isinstance(a, ast.Starred) else a, value) for a in args):
                return True
    return False


def carried(expr: ast.AST, value: set[str]) -> set[str]:
    """Attribute paths of ``expr``'s object that hold the value (``""`` for the object itself)."""
    if holds(expr, value) if isinstance(expr, ast.Call) else reads(expr, value):
        return {""}
    name = dotted(expr)
    if name is None:
        return set()
    return {v[len(name) :] for v in value if v.startswith(name + ".")}


def targets(node: ast.AST) -> list[str]:
    return [n for n in (dotted(t) for t in ast.walk(node)) if n and not n.startswith("self.")]


def function_value(fn: ast.FunctionDef, value: set[str]) -> tuple[set[str], set[str]]:
    """The dotted names holding the value in ``fn`` (to a fixed point), and the ``self``
    attributes assigned from it."""
    value = set(value)
    attrs: set[str] = set()
    changed = True
    while changed:
        changed = False
        for node in ast.walk(fn):
            pairs = []
            if isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
            elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.NamedExpr) and node.value:
                pairs = [(node.target, node.value)]
            elif isinstance(node, ast.For | ast.comprehension):
                pairs = [(node.target, node.iter)]
            elif isinstance(node, ast.withitem) and node.optional_vars is not None:
                pairs = [(node.optional_vars, node.context_expr)]
            for target, source in pairs:
                if not holds(source, value):
                    continue
                for t in ast.walk(target):
                    name = dotted(t)
                    if name and name.startswith("self.") and name.count(".") == 1:
                        attrs.add(name[5:])
                for name in targets(target):
                    if name not in value:
                        value.add(name)
                        changed = True
    return value, attrs


def bind(fn: ast.FunctionDef, call: ast.Call, value: set[str], is_method: bool) -> set[str]:
    """The callee's parameter names (with attribute paths) that receive the value."""
    params = [a.arg for a in fn.args.posonlyargs + fn.args.args]
    if is_method and params:
        params = params[1:]
    kwonly = [a.arg for a in fn.args.kwonlyargs]
    bound: set[str] = set()
    for i, arg in enumerate(call.args):
        if isinstance(arg, ast.Starred):
            if reads(arg.value, value):
                bound |= set(params[i:])
            continue
        paths = carried(arg, value)
        if paths and i < len(params):
            bound |= {params[i] + p for p in paths}
        elif paths and fn.args.vararg:
            bound.add(fn.args.vararg.arg)
    for kw in call.keywords:
        paths = carried(kw.value, value)
        if not paths:
            continue
        if kw.arg is None:
            bound |= set(params + kwonly)
            if fn.args.kwarg:
                bound.add(fn.args.kwarg.arg)
        elif kw.arg in params or kw.arg in kwonly:
            bound |= {kw.arg + p for p in paths}
        elif fn.args.kwarg:
            bound.add(fn.args.kwarg.arg)
    return bound


@dataclass
class Walk:
    house: House
    follow_value: bool
    rooms: list[str] = field(default_factory=list)
    climbs: list[tuple[str, str, int]] = field(default_factory=list)
    returns: list[tuple[str, str, int]] = field(default_factory=list)
    steps: list[str] = field(default_factory=list)
    trail: list[str] = field(default_factory=list)
    seen: set = field(default_factory=set)
    class_attrs: dict[tuple[str, str], set[str]] = field(default_factory=dict)
    parent: dict[str, tuple[str, int]] = field(default_factory=dict)

    def enter(self, caller: str | None, callee: str, line: int, label: str) -> None:
        if caller is not None and caller != callee:
            if layer(callee) > layer(caller):
                self.climbs.append((caller, callee, line))
            if callee in self.rooms:
                self.returns.append((caller, callee, line))
        if callee not in self.rooms:
            self.rooms.append(callee)
        self.steps.append(f"{caller or '(entry)'}:{line} -> {label}")
        self.trail.append(callee)

    def function(self, module: str, name: str, value: set[str]) -> None:
        key = (module, name, frozenset(value) if self.follow_value else None)
        if key in self.seen:
            return
        self.seen.add(key)
        fn = self.house.modules[module].functions[name]
        owner = name.split(".")[0] if "." in name else None
        if owner and self.follow_value:
            marked = self.class_attrs.get((module, owner), set())
            value = value | {f"self.{a}" for a in marked if a != "*"}
            if "*" in marked:
                value.add("self")
        if self.follow_value:
            value, attrs = function_value(fn, value)
            if owner and attrs:
                self.mark(module, owner, attrs, (f"{module}.{name}", fn.lineno))
        calls = sorted(
            (n for n in ast.walk(fn) if isinstance(n, ast.Call)),
            key=lambda n: (n.lineno, n.col_offset),
        )
        for call in calls:
            passes = reads(ast.Tuple(elts=list(call.args), ctx=ast.Load()), value) or any(
                carried(kw.value, value) for kw in call.keywords
            )
            passes = passes or any(carried(a, value) for a in call.args)
            if self.follow_value and not passes:
                continue
            target = self.house.resolve(module, owner, call.func)
            if target is None:
                continue
            is_class = target[1] in self.house.modules[target[0]].classes
            callee_module, callee = self.house.entered(*target)
            self.enter(module, callee_module, call.lineno, f"{callee_module}.{callee or target[1]}")
            if is_class and (callee is None or not self.follow_value):
                self.mark(target[0], target[1], {"*"}, (f"{module}.{name}", call.lineno))
            if callee is None:
                continue
            self.parent.setdefault(f"{callee_module}.{callee}", (f"{module}.{name}", call.lineno))
            callee_fn = self.house.modules[callee_module].functions[callee]
            bound = bind(callee_fn, call, value, "." in callee) if self.follow_value else set()
            self.function(callee_module, callee, bound)

    def mark(self, module: str, cls: str, attrs: set[str], via: tuple[str, int]) -> None:
        """Attributes of ``cls`` now hold the value: enter the methods that read them."""
        known = self.class_attrs.setdefault((module, cls), set())
        new = attrs - known
        if not new:
            return
        known |= new
        names = {"self"} if "*" in known else {f"self.{a}" for a in known if a != "*"}
        for name, fn in list(self.house.modules[module].functions.items()):
            if name.startswith(cls + ".") and reads(fn, names):
                self.enter(module, module, fn.lineno, f"{module}.{name} (reads self)")
                self.parent.setdefault(f"{module}.{name}", via)
                self.function(module, name, set())


def run_walk(
    house: House, entry_module: str, entry: str, value: set[str], follow_value: bool, direct: bool
):
    global RESULTS_HOLD_THE_VALUE
    RESULTS_HOLD_THE_VALUE = not direct
    walk = Walk(house, follow_value)
    walk.enter(None, entry_module, 0, f"{entry_module}.{entry}")
    walk.function(entry_module, entry, value)
    return walk


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", default="src/infosft", help="the package directory to walk")
    parser.add_argument("--walk", choices=[*WALKS, "all"], default="all")
    parser.add_argument("--trace", action="store_true", help="print every step of each walk")
    args = parser.parse_args()
    src = Path(args.src).resolve()
    if not (src / "__init__.py").is_file():
        parser.error(f"--src {args.src} is not a package directory (no __init__.py)")
    house = House(load(src))
    print(f"layers: {' < '.join(LAYERS)}")
    print(
        f"{'walk':8} {'view':10} {'rooms':>5} {'climbs':>6} {'returns':>7} {'distinct':>8} "
        f"{'ups':>4} {'calls':>5}"
    )
    walks = {}
    for name, (module, entry, value, _) in WALKS.items():
        if args.walk not in (name, "all"):
            continue
        if module not in house.modules or entry not in house.modules[module].functions:
            print(f"{name:8} entry {module}.{entry} not found under {src}")
            continue
        views = (("value", True, False), ("direct", True, True), ("all calls", False, False))
        for view, follow, direct in views:
            walk = run_walk(house, module, entry, value, follow, direct)
            walks[name, view] = walk
            distinct = len({(a, b) for a, b, _ in walk.returns})
            ups = sum(layer(b) > layer(a) for a, b in itertools.pairwise(walk.trail))
            print(
                f"{name:8} {view:10} {len(walk.rooms):5d} {len(walk.climbs):6d} "
                f"{len(walk.returns):7d} {distinct:8d} {ups:4d} {len(walk.steps) - 1:5d}"
            )
    for (name, view), walk in walks.items():
        if view != "value":
            continue
        print(f"\n{name}, value view: rooms in order entered")
        print("  " + " -> ".join(m.removeprefix(PACKAGE + ".") for m in walk.rooms))
        print(
            "  climbs: "
            + ", ".join(
                f"{a.removeprefix(PACKAGE + '.')}:{line} -> {b.removeprefix(PACKAGE + '.')}"
                for a, b, line in walk.climbs
            )
            if walk.climbs
            else "  climbs: none (every call goes to the same or a lower layer)"
        )
        goal = WALKS[name][3]
        chain = [goal]
        while chain[-1] in walk.parent and len(chain) < 50:
            caller, line = walk.parent[chain[-1]]
            chain[-1] += f" (called at line {line} of the caller)"
            chain.append(caller)
        if len(chain) > 1:
            print(f"  path to {goal}:")
            print("\n".join("    " + step.removeprefix(PACKAGE + ".") for step in reversed(chain)))
        else:
            print(f"  {goal} is not reached")
        if args.trace:
            print("\n".join("  " + step for step in walk.steps))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
