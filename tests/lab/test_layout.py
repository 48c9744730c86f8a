"""The package's layout: library (fedgma.strategy, fedgma.loop) <- Flower app (fedgma.app) <-
deployment tooling (fedgma.deployment: what the container image runs) <- research tooling (fedgma.lab)
<- the ``fedgma`` command (fedgma.cli, fedgma.__main__), imports pointing one way; the library
needs neither torch nor the app; the app bundle Flower sends to SuperNodes holds the library
and the app only."""

import ast
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "fedgma"
LIBRARY = ("fedgma.strategy", "fedgma.loop")
COMMAND = ("fedgma.cli", "fedgma.__main__")
# What each layer may import of this project (besides itself).
ALLOWED = {
    "library": LIBRARY,
    "app": (*LIBRARY, "fedgma.app"),
    "deployment": (*LIBRARY, "fedgma.app", "fedgma.deployment"),
    "lab": (*LIBRARY, "fedgma.app", "fedgma.deployment", "fedgma.lab"),
    "command": (*LIBRARY, "fedgma.app", "fedgma.deployment", "fedgma.lab", *COMMAND),
}


def layer(module: str) -> str:
    module = module.removesuffix(".__init__")
    if module.startswith(LIBRARY) or module == "fedgma":
        return "library"
    for prefix in ("app", "deployment", "lab"):
        if module == f"fedgma.{prefix}" or module.startswith(f"fedgma.{prefix}."):
            return prefix
    assert module in COMMAND, f"{module}: in no layer (add it to one)"
    return "command"


def project_imports(path: Path) -> list[str]:
    """Absolute names of the fedgma modules that ``path`` imports (relative ones resolved)."""
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                names.append(".".join(base + ([node.module] if node.module else [])))
            else:
                names.append(node.module)
    return [n for n in names if n == "fedgma" or n.startswith("fedgma.")] + [
        n for n in names if n.split(".")[0] in ("torch", "torchvision")
    ]


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    mine = layer(module)
    for name in project_imports(path):
        if name.split(".")[0] in ("torch", "torchvision"):
            assert mine != "library", f"{module} (library) imports {name}"
            continue
        assert name == "fedgma" or name.startswith(ALLOWED[mine]), f"{module} ({mine}) imports {name}"


def test_the_library_imports_without_torch_or_the_app():
    blocker = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'flwr_datasets', 'matplotlib'):\n"
        "    sys.modules[name] = None  # an import of it raises ImportError\n"
        "from fedgma.strategy import FedGMA, FedGMAAdam\n"
        "from fedgma.loop import RoundLoop, resume_point\n"
        "tooling = ('fedgma.app', 'fedgma.deployment', 'fedgma.lab', 'fedgma.cli')\n"
        "assert not any(m.startswith(tooling) for m in sys.modules)\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_the_client_app_imports_only_what_training_from_the_cached_partition_needs():
    """A ClientApp process starts per message: what it imports of ours is paid every time."""
    check = (
        "import sys\n"
        "import fedgma.app.client_app\n"
        "from fedgma.app.settings import defaults, parse_run_config\n"
        "from fedgma.app.task import make_task\n"
        "make_task(parse_run_config(defaults()).task)  # what a message builds before its partition is read\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('fedgma'))\n"
        "extra = [m for m in ('torchvision', 'flwr_datasets', 'datasets', 'matplotlib') if m in sys.modules]\n"
        "print(' '.join(loaded)); print(' '.join(extra) or '-')\n"
    )
    result = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    loaded, extra = result.stdout.strip().splitlines()
    loaded = set(loaded.split())
    assert extra == "-"
    # Of the library: the partition record's name, the mask's default tau, atomic writes; not the loop or strategies.
    assert {m for m in loaded if not m.startswith("fedgma.app")} == {
        "fedgma", "fedgma.loop", "fedgma.loop.partitions", "fedgma.loop.atomic", "fedgma.strategy",
        "fedgma.strategy.masking"}
    assert not any(m.startswith(("fedgma.lab", "fedgma.deployment", "fedgma.cli", "fedgma.app.server_app",
                                 "fedgma.app.outputs", "fedgma.app.run_folder")) for m in loaded)


@pytest.mark.parametrize("package", ["fedgma.loop", "fedgma.strategy"])
def test_lazy_package_names_agree_and_resolve(package):
    """The library's packages import their names on first use: the name -> module map, ``__all__``
    and the imports type checkers read must list the same names, each the module's own object."""
    module = importlib.import_module(package)
    tree = ast.parse(Path(module.__file__).read_text())
    typed = {alias.name for node in ast.walk(tree) if isinstance(node, ast.If)
             for stmt in node.body if isinstance(stmt, ast.ImportFrom) for alias in stmt.names}
    assert set(module.__all__) == set(module._MODULE_OF) == typed
    for name, where in module._MODULE_OF.items():
        assert getattr(module, name) is getattr(importlib.import_module(f"{package}.{where}"), name)
    assert dir(module) == sorted(module.__all__)  # dir() lists the public names, loaded or not
    with pytest.raises(AttributeError, match="no attribute 'missing'"):
        module.missing  # noqa: B018


def build_fab(files: list[str], where: Path) -> set[str]:
    """``flwr build`` of a copy of ``files`` (paths relative to the repository); the bundle's names."""
    copy = where / "app"
    for name in files:
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            (copy / name).write_bytes((ROOT / name).read_bytes())
    flwr = Path(sys.executable).parent / "flwr"
    result = subprocess.run([str(flwr), "build", "--app", str(copy)], cwd=where, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    (fab,) = where.glob("*.fab")
    return set(zipfile.ZipFile(fab).namelist()) - {".info/CONTENT"}


@pytest.mark.parametrize("copy", ["repository", "image"])
def test_the_app_bundle_holds_the_library_and_the_app_only(tmp_path, copy):
    """From the repository (tests, results, docs, examples beside the app) and from what the
    Dockerfile copies into the image (the compose control service builds the bundle there)."""
    tracked = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    if copy == "image":
        tracked = [n for n in tracked if n in ("pyproject.toml", "README.md", "LICENSE") or n.startswith("fedgma/")]
    expected = {"pyproject.toml", "README.md", "LICENSE"} | {
        str(p.relative_to(ROOT)) for p in PACKAGE.rglob("*.py")
        if layer(".".join(p.relative_to(ROOT).with_suffix("").parts)) in ("library", "app")
    }
    assert build_fab(tracked, tmp_path) == expected


def test_the_demo_does_not_import_the_grid_runner():
    """The demo runs two strategies with the deployment tooling; grids are another tool."""
    names = project_imports(PACKAGE / "lab" / "demo.py")
    assert not [n for n in names if n.startswith("fedgma.lab.experiments")], names
