"""The rule of the house (docs/architecture.md), read from every import in the package, module-level and inside
functions alike: no import cycles; core/, data/ and fid/ free of Ray, MLflow and Optuna; cluster/ free of torch;
ray.train only in train/session and train/driver; Ray Tune and Optuna only in search/ and replay/ (and ui.py),
MLflow only in search/ (and ui.py); no module over 450 lines; no function-level import of the package's own
modules without a comment saying why; Tune's result objects read only by search/trials.py and the tuner; in
search/conclude/ a stage imports only earlier stages, only the record stage MLflow, and only conclude() prints; no
function over 60 lines but the training loop; the public import paths name what they export (``__all__``). A
synthetic package shows that each rule catches what it names."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 450
FRAMEWORKS = ("ray", "mlflow", "optuna")
SEARCHERS = ("search", "replay", "ui")  # the layers that drive Ray Tune's schedulers and Optuna


def _module_name(path: Path, root: Path, package: str) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join([package, *parts])


def _imports(path: Path, module: str, is_package: bool) -> list[str]:
    """Every module ``path`` imports, relative imports resolved, with ``from m import n`` as m.n (a submodule) or
    m (a name in m); the caller keeps what exists."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return found


def package_graph(root: Path, package: str) -> tuple[dict[str, list[str]], dict[str, Path]]:
    """module -> every name it imports, and module -> file."""
    files = {_module_name(p, root, package): p for p in sorted(root.rglob("*.py"))}
    imports = {name: _imports(path, name, path.name == "__init__.py") for name, path in files.items()}
    return imports, files


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    cycles, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return cycles


def _third_party(name: str, top: str) -> bool:
    return name == top or name.startswith(top + ".")


def _commented(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or on the line above it or above the group of imports it belongs to."""
    j = index
    while j >= 0:
        if "#" in lines[j]:
            return True
        if j < index and not lines[j].strip().startswith(("from ", "import ")):
            return False
        j -= 1
    return False


def uncommented_function_imports(path: Path, module: str, package: str) -> list[str]:
    """Imports of the package's own modules inside functions with no comment saying why (a heavy or optional
    dependency kept off a path, a cycle)."""
    text = path.read_text()
    lines, found = text.splitlines(), []
    for fn in ast.walk(ast.parse(text)):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            own = isinstance(node, ast.ImportFrom) and (node.level > 0 or (node.module or "").startswith(package))
            if own and not _commented(lines, node.lineno - 1):
                found.append(f"{module}:{node.lineno}: a function-level import of the package without a comment "
                             "on its line or the line above saying why")
    return found


MAX_FUNCTION_LINES = 60
LONG_FUNCTIONS = ("train.loop.run_worker",)  # the training loop reads as one loop in labelled blocks, as EDM's


def long_functions(path: Path, module: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            name = f"{module.split('.', 1)[-1]}.{node.name}"
            if lines > MAX_FUNCTION_LINES and name not in LONG_FUNCTIONS:
                found.append(f"{module}.{node.name} has {lines} lines (at most {MAX_FUNCTION_LINES})")
    return found


TUNE_RESULT_READERS = ("search.trials", "search.tuner")  # after the tuner, every stage reads trial records
TUNE_RESULT_NAMES = ("metrics_dataframe", "ResultGrid", "ExperimentAnalysis")


def tune_result_reads(path: Path, module: str) -> list[str]:
    """Reads of Tune's result objects (a ResultGrid, its results' dataframes, an ExperimentAnalysis)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else \
            next((a.name for a in node.names if a.name in TUNE_RESULT_NAMES), None) \
            if isinstance(node, ast.ImportFrom) else None
        if name in TUNE_RESULT_NAMES:
            found.append(f"{module}:{node.lineno} reads Tune's results ({name}): only search/trials.py and the tuner "
                         "do; later stages read trial records")
    return found


STAGES = ("finalists", "evaluator", "posthoc", "final", "champion", "summary", "report", "record")  # their order


def stage_rules(module: str, names: list[str], path: Path, package: str) -> list[str]:
    """search/conclude/: a stage imports only earlier stages; only the record stage imports MLflow; only
    ``conclude()`` (the package's __init__) prints."""
    inner = module[len(package) + 1:].split(".")
    if inner[:2] != ["search", "conclude"]:
        return []
    stage, found = (inner[2] if len(inner) > 2 else None), []
    prefix = f"{package}.search.conclude."
    for name in names:
        if name.startswith(prefix) and stage in STAGES:
            other = name[len(prefix):].split(".")[0]
            if other in STAGES and STAGES.index(other) >= STAGES.index(stage) and other != stage:
                found.append(f"{module} imports the later stage {other}: a stage imports only earlier stages")
        if _third_party(name, "mlflow") and stage != "record":
            found.append(f"{module} imports {name}: in conclude/ only the record stage writes to MLflow")
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (stage is None and node.name == "conclude"):
            for call in ast.walk(node):
                if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id == "print":
                    found.append(f"{module}.{node.name}:{call.lineno} prints: in conclude/ only conclude() prints")
    return found


def violations(root: Path, package: str) -> list[str]:
    imports, files = package_graph(root, package)
    found = []
    internal = {m: {i for i in names if i in files and i != m} for m, names in imports.items()}
    found += [f"import cycle: {' -> '.join(c)}" for c in _cycles(internal)]
    for module, names in imports.items():
        inner = module[len(package) + 1:]
        layer = inner.split(".")[0]
        external = [n for n in names if not n.startswith(package)]
        for name in external:
            if layer in ("core", "data", "fid") and any(_third_party(name, f) for f in FRAMEWORKS):
                found.append(f"{module} imports {name}: {layer}/ stays free of Ray, MLflow and Optuna")
            if layer == "cluster" and _third_party(name, "torch"):
                found.append(f"{module} imports {name}: cluster/ stays free of torch")
            if _third_party(name, "ray.train") and inner not in ("train.session", "train.driver"):
                found.append(f"{module} imports {name}: ray.train belongs to train/session and train/driver")
            if (_third_party(name, "ray.tune") or _third_party(name, "optuna")) and layer not in SEARCHERS:
                found.append(f"{module} imports {name}: Ray Tune and Optuna belong to search/ and replay/ (and ui)")
            if _third_party(name, "mlflow") and layer not in ("search", "ui"):
                found.append(f"{module} imports {name}: MLflow belongs to search/ (and ui)")
        found += uncommented_function_imports(files[module], module, package)
        found += stage_rules(module, names, files[module], package)
        found += long_functions(files[module], module)
        if inner not in TUNE_RESULT_READERS:
            found += tune_result_reads(files[module], module)
        lines = len(files[module].read_text().splitlines())
        if lines > MAX_LINES:
            found.append(f"{module} has {lines} lines (at most {MAX_LINES})")
    return sorted(set(found))


def test_the_package_keeps_the_rule():
    assert violations(ROOT / "spd_tune", "spd_tune") == []


def test_the_layers_are_there():
    for layer in ("core", "data", "fid", "train", "posthoc", "search", "replay", "cluster"):
        assert (ROOT / "spd_tune" / layer / "__init__.py").is_file(), layer
    for command in ("search", "train", "fid", "cluster", "replay"):
        assert (ROOT / "spd_tune" / command / "__main__.py").is_file(), command


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for folder in [p for p in (root / "pkg").rglob("*") if p.is_dir()] + [root / "pkg"]:
        (folder / "__init__.py").touch()
    return root / "pkg"


@pytest.mark.parametrize("files, expected", [
    ({"a.py": "from . import b\n", "b.py": "def f():\n    from .a import x\n"},
     "import cycle: pkg.a -> pkg.b -> pkg.a"),
    ({"core/m.py": "import ray\n"}, "pkg.core.m imports ray: core/ stays free"),
    ({"data/m.py": "def f():\n    import mlflow\n"}, "pkg.data.m imports mlflow: data/ stays free"),
    ({"fid/m.py": "from optuna import samplers\n"}, "pkg.fid.m imports optuna: fid/ stays free"),
    ({"cluster/m.py": "import torch.nn\n"}, "pkg.cluster.m imports torch.nn: cluster/ stays free of torch"),
    ({"train/loop.py": "import ray.train\n"}, "pkg.train.loop imports ray.train: ray.train belongs"),
    ({"search/x.py": "from ray.train import Checkpoint\n"}, "pkg.search.x imports ray.train: ray.train belongs"),
    ({"train/driver.py": "from ray.tune import Callback\n"}, "pkg.train.driver imports ray.tune: Ray Tune"),
    ({"core/m.py": "def f():\n    import optuna\n"}, "pkg.core.m imports optuna"),
    ({"cli.py": "import mlflow\n"}, "pkg.cli imports mlflow: MLflow belongs to search/"),
    ({"replay/m.py": "import mlflow\n"}, "pkg.replay.m imports mlflow: MLflow belongs to search/"),
    ({"train/m.py": "import optuna\n"}, "pkg.train.m imports optuna: Ray Tune and Optuna belong to search/ and replay/"),
    ({"core/big.py": "x = 1\n" * (MAX_LINES + 1)}, f"pkg.core.big has {MAX_LINES + 1} lines"),
    ({"a.py": "def f():\n    from . import b\n", "b.py": ""}, "pkg.a:2: a function-level import of the package"),
    ({"search/report.py": "def f(r):\n    return r.metrics_dataframe\n"}, "pkg.search.report:2 reads Tune's results"),
    ({"core/m.py": "def f():\n" + "    x = 1\n" * MAX_FUNCTION_LINES}, f"pkg.core.m.f has {MAX_FUNCTION_LINES + 1} lines"),
    ({"replay/convert.py": "from ray.tune import ExperimentAnalysis\n"}, "pkg.replay.convert:1 reads Tune's results"),
    ({"a.py": "def f():\n    # why\n    x = 1\n    from .b import y\n", "b.py": "y = 1\n"}, "pkg.a:4: a function"),
    ({"search/conclude/final.py": "from .champion import x\n", "search/conclude/champion.py": "x = 1\n"},
     "pkg.search.conclude.final imports the later stage champion"),
    ({"search/conclude/summary.py": "from . import record\n", "search/conclude/record.py": ""},
     "pkg.search.conclude.summary imports the later stage record"),
    ({"search/conclude/final.py": "def f():\n    import mlflow\n"}, "in conclude/ only the record stage writes"),
    ({"search/conclude/posthoc.py": "def run():\n    print('x')\n"}, "pkg.search.conclude.posthoc.run:2 prints"),
    ({"search/conclude/__init__.py": "def helper():\n    print('x')\n"}, "pkg.search.conclude.helper:2 prints"),
])
def test_each_rule_catches_what_it_names(tmp_path, files, expected):
    package = _write(tmp_path, files)
    found = violations(package, "pkg")
    assert any(expected in v for v in found), found


def test_allowed_imports_pass_in_a_synthetic_tree(tmp_path):
    package = _write(tmp_path, {
        "train/driver.py": "import ray.train\nfrom ..core import m\n",
        "train/session.py": "def f():\n    import ray.train\n",
        "search/tuner.py": "from ray import tune\nimport optuna\nimport mlflow\nfrom ..train import driver\n",
        "search/trials.py": "def f(results):\n    return [r.metrics_dataframe for r in results]\n",
        "search/conclude/__init__.py": "from . import final, record\ndef conclude():\n    print('done')\n",
        "search/conclude/final.py": "from .posthoc import x\n",
        "search/conclude/posthoc.py": "x = 1\n",
        "search/conclude/record.py": "import mlflow\nfrom .final import x\n",
        "ui.py": "import mlflow\n",
        "replay/simulate.py": "import optuna\nfrom ray.tune.schedulers import FIFOScheduler\n",
        "cluster/connect.py": "import ray\n",
        "core/m.py": "import torch\n",
        "core/lazy.py": "def f():\n    # heavy: kept off the dry run\n    from . import m\n    from .m import torch\n"
                        "    from pkg.core import m as n  # an optional dependency\n",
    })
    assert violations(package, "pkg") == []


def test_the_public_import_paths_name_what_they_export():
    import importlib

    for shim, core in (("schedule", "schedule"), ("sampling", "samplers"), ("unet", "unet"),
                       ("spectrum", "spectrum"), ("checkpoint", "checkpoint")):
        module = importlib.import_module(f"spd_tune.{shim}")
        exported = set(module.__all__)
        source = importlib.import_module(f"spd_tune.core.{core}")
        public = {n for n, v in vars(source).items() if not n.startswith("_") and (
            getattr(v, "__module__", None) == source.__name__ or n.isupper())}
        assert public <= exported | {"F"}, (shim, sorted(public - exported))
        assert all(hasattr(module, n) for n in exported)


def test_dry_run_and_bad_input_do_not_import_the_frameworks(tmp_path):
    import subprocess
    import sys

    code = ("import sys\nfrom spd_tune.search.__main__ import main\n"
            f"assert main(['demo', '--dry-run', '--output', {str(tmp_path)!r}]) == 0\n"
            f"assert main(['demo', '--output', {str(tmp_path)!r}, '--set', 'serach.trials=3']) == 2\n"
            "print(sorted(m for m in ('ray.tune', 'ray.train', 'optuna', 'mlflow') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
