"""Structure rules of the package: no import cycle (function-level imports included), no module over 600 lines."""
import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "biformer_edge"
MAX_LINES = 600


def module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PKG.rglob("*.py")}


def imports_of(name: str, path: Path, known: dict) -> set[str]:
    """Every biformer_edge module ``name`` imports, at any depth in the file (functions included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in known else mod for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    return found


def test_no_import_cycles():
    known = modules()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    cycles, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_over_600_lines():
    long = {name: n for name, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, long


def test_the_device_side_modules_import_no_torch_at_module_level():
    """Module-level imports only (function-level torch imports are how the device side stays torch-free)."""
    device_side = ["biformer_edge", "biformer_edge.api", "biformer_edge.artifact", "biformer_edge.fileio",
                   "biformer_edge.manifest", "biformer_edge.contract", "biformer_edge.quant.settings",
                   "biformer_edge.targets",
                   "biformer_edge.console", "biformer_edge.cli", "biformer_edge.preprocess", "biformer_edge.errors",
                   "biformer_edge.backends", "biformer_edge.backends.base", "biformer_edge.backends.onnx",
                   "biformer_edge.backends.openvino", "biformer_edge.backends.tensorrt",
                   "biformer_edge.backends.coreml", "biformer_edge.backends.pytorch",
                   "biformer_edge.backends.onnx.session", "biformer_edge.backends.tensorrt.session",
                   "biformer_edge.backends.tensorrt.rules", "biformer_edge.backends.openvino.session",
                   "biformer_edge.backends.openvino.rules", "biformer_edge.backends.coreml.session",
                   "biformer_edge.backends.coreml.rules", "biformer_edge.argtypes",
                   "biformer_edge.parity", "biformer_edge.parity.check",
                   "biformer_edge.metrics", "biformer_edge.parity.inputs", "biformer_edge.data",
                   "biformer_edge.data.synthetic", "biformer_edge.data.seeds",
                   "biformer_edge.data.images"]
    known = modules()
    for name in device_side:
        tree = ast.parse(known[name].read_text())
        top = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
        names = {a.name for n in top if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in top if isinstance(n, ast.ImportFrom) and n.module and not n.level}
        assert not {m for m in names if m == "torch" or m.startswith("torch.")}, name


# Which way imports run (at any depth, function-level included). The floors (contract, errors, models, data,
# metrics) know no tool; quantization knows models and data but no backend, parity or exporter; backends know graphs
# and runtimes but not quantization or parity; the registry of targets loads backend modules only by name.
FORBIDDEN_IMPORTS = {
    "biformer_edge.contract": ["biformer_edge."],
    "biformer_edge.models": ["biformer_edge.quant", "biformer_edge.backends", "biformer_edge.parity",
                             "biformer_edge.exporter", "biformer_edge.targets", "biformer_edge.cli"],
    "biformer_edge.data": ["biformer_edge.quant", "biformer_edge.backends", "biformer_edge.parity",
                           "biformer_edge.models", "biformer_edge.exporter", "biformer_edge.targets"],
    "biformer_edge.metrics": ["biformer_edge.quant", "biformer_edge.backends", "biformer_edge.parity",
                              "biformer_edge.models", "biformer_edge.exporter", "biformer_edge.targets"],
    "biformer_edge.quant": ["biformer_edge.backends", "biformer_edge.parity", "biformer_edge.exporter",
                            "biformer_edge.targets", "biformer_edge.cli", "biformer_edge.bench"],
    "biformer_edge.backends": ["biformer_edge.quant", "biformer_edge.parity", "biformer_edge.exporter",
                               "biformer_edge.cli", "biformer_edge.bench"],
    "biformer_edge.targets": ["biformer_edge.backends."],
    "biformer_edge.parity": ["biformer_edge.quant", "biformer_edge.exporter", "biformer_edge.cli",
                             "biformer_edge.bench"],
    "biformer_edge.fileio": ["biformer_edge.manifest", "biformer_edge.artifact", "biformer_edge.models",
                             "biformer_edge.quant", "biformer_edge.backends", "biformer_edge.parity"],
    "biformer_edge.manifest": ["biformer_edge.artifact", "biformer_edge.models", "biformer_edge.quant",
                               "biformer_edge.backends", "biformer_edge.parity"],
}


def owner_rules(name: str) -> tuple[str | None, list[str]]:
    owner = next((o for o in FORBIDDEN_IMPORTS if name == o or name.startswith(o + ".")), None)
    return owner, FORBIDDEN_IMPORTS.get(owner, [])


def forbids(rule: str, target: str) -> bool:
    """'pkg' forbids pkg and its modules; 'pkg.' only its modules (e.g. the backends' own, not their package)."""
    return target.startswith(rule) if rule.endswith(".") else target == rule or target.startswith(rule + ".")


def test_imports_run_one_way():
    known = modules()
    broken = []
    for name, path in sorted(known.items()):
        owner, forbidden = owner_rules(name)
        for target in sorted(imports_of(name, path, known)):
            if target == owner or target.startswith(f"{owner}.") or target == "biformer_edge.errors":
                continue   # within its own package; errors is a leaf (it imports nothing) every floor may raise
            if any(forbids(f, target) for f in forbidden):
                broken.append(f"{name} -> {target}")
    assert not broken, "imports against the rules: " + "; ".join(broken)


# A backend package's __init__ is its descriptor: what targets.py (and every command through it) imports to know the
# backend. It loads its export/session/rules modules only by name (Backend.export_module, session_class,
# device_check), so knowing the backends costs no runtime import and no torch.
BACKEND_SIDES = ("export", "session", "rules")
RUNTIME_LIBRARIES = ("torch", "onnx", "onnxruntime", "openvino", "coremltools", "tensorrt", "cuda")


def test_backend_descriptors_import_no_side_of_any_backend():
    known = modules()
    descriptors = [n for n in known if n.startswith("biformer_edge.backends.") and known[n].name == "__init__.py"]
    assert len(descriptors) == 5, descriptors
    broken = [f"{name} -> {target}" for name in descriptors for target in imports_of(name, known[name], known)
              if target.startswith("biformer_edge.backends.") and target.rsplit(".", 1)[-1] in BACKEND_SIDES]
    assert not broken, "descriptors importing a backend side: " + "; ".join(broken)


def test_targets_loads_no_backend_side_nor_runtime():
    """What importing the registry (and the CLI module, and the console) loads: the descriptors, never an export,
    session or rules module, never torch or a runtime library."""
    import subprocess
    import sys
    probe = ("import sys, biformer_edge.targets, biformer_edge.cli, biformer_edge.console\n"
             "sides = sorted(m for m in sys.modules if m.startswith('biformer_edge.backends.')\n"
             "               and m.rsplit('.', 1)[-1] in " + repr(BACKEND_SIDES) + ")\n"
             "libs = sorted(m for m in " + repr(RUNTIME_LIBRARIES) + " if m in sys.modules)\n"
             "assert not sides and not libs, (sides, libs)")
    subprocess.run([sys.executable, "-c", probe], check=True)

