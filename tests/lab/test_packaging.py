"""What the project's distributions hold, and what the core install's commands do without the extras.

The sdist and the wheel are built from a copy of this working tree (setuptools' own build
backend, as pip calls it); the commands of an installed core are run for real by
test_example.py, in virtualenvs with Flower alone.
"""

import email
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
from run_settings import ROOT

from fedgma import cli
from fedgma.deployment import app_folder

BUILD = """
import sys
from setuptools import build_meta
out = sys.argv.pop(1)  # setuptools reads sys.argv too
sdist = build_meta.build_sdist(out)
wheel = build_meta.build_wheel(out)
print("BUILT", sdist, wheel)
"""


@pytest.fixture(scope="module")
def distributions(tmp_path_factory) -> tuple[Path, Path]:
    source = tmp_path_factory.mktemp("source")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((ROOT / name).read_bytes())
    out = tmp_path_factory.mktemp("dist")
    built = subprocess.run([sys.executable, "-c", BUILD, str(out)], cwd=source, capture_output=True, text=True)
    assert built.returncode == 0, built.stderr[-3000:]
    sdist, wheel = built.stdout.rsplit("BUILT ", 1)[1].split()
    return out / sdist, out / wheel


def test_the_sdist_holds_the_package_and_no_tests_that_could_not_run(distributions):
    sdist, _ = distributions
    with tarfile.open(sdist) as archive:
        names = [name.split("/", 1)[1] for name in archive.getnames() if "/" in name]
    assert {"pyproject.toml", "README.md", "LICENSE", "fedgma/loop/rounds.py", "fedgma/strategy/fedgma.py",
            "fedgma/app/server_app.py"} <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "examples/", "results/"))]


def test_the_wheel_says_what_it_is_and_where_to_read_more(distributions):
    _, wheel = distributions
    with zipfile.ZipFile(wheel) as archive:
        (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = email.message_from_bytes(archive.read(metadata_name))
        entry_points = archive.read(metadata_name.replace("METADATA", "entry_points.txt")).decode()
        assert not [n for n in archive.namelist() if n.startswith("tests/")]
    classifiers = metadata.get_all("Classifier")
    assert "Programming Language :: Python :: 3.11" in classifiers
    assert "Programming Language :: Python :: 3.12" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL"))
    assert urls["Paper (ws variant)"] == "https://arxiv.org/abs/2104.10322" and "Flower" in urls
    requires = metadata.get_all("Requires-Dist")
    # The core and the app admit Flower 1.39-1.42; only the gRPC deployment pins 1.39.
    assert "flwr<1.43,>=1.39" in requires
    assert 'flwr[simulation]<1.43,>=1.39; extra == "app"' in requires
    assert 'flwr[simulation]==1.39.*; extra == "deploy"' in requires
    assert [r for r in requires if "1.39.*" in r] == ['flwr[simulation]==1.39.*; extra == "deploy"']
    # One command for every tool: fedgma superlink | compose | grid | report | ...
    assert [line for line in entry_points.splitlines() if "=" in line] == ["fedgma = fedgma.cli:main"]


def test_a_command_without_its_extra_says_in_one_line_what_it_needs(monkeypatch, capsys):
    real_find_spec = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name: None if name in ("torch", "matplotlib") else real_find_spec(name))
    for argv in (["grid", "status", "smoke"], ["toy"], ["bench", "--quick"], ["report", "results/full"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err == f"fedgma {argv[0]}: needs torch, matplotlib, which the core install leaves out: " \
                      "pip install 'fedgma[lab]'\n"


def test_the_app_folder_is_the_checkout_or_a_clone_in_the_current_directory(monkeypatch, tmp_path, capsys):
    assert app_folder.app_dir() == ROOT
    monkeypatch.setattr(app_folder, "SOURCE_DIR", tmp_path / "site-packages")  # an installed package
    monkeypatch.chdir(tmp_path)
    with pytest.raises(app_folder.AppFolderNotFound):
        app_folder.app_dir()
    for argv in (["grid", "status", "smoke"], ["bench", "--quick"], ["probe", "results/full"], ["demo"]):
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"fedgma {argv[0]}: needs this repository's Flower app folder" in err
    # --app names it; a folder that is not the app is refused in one line.
    assert app_folder.app_dir(ROOT) == ROOT
    assert cli.main(["grid", "status", "smoke", "--app", str(tmp_path), "--results-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"fedgma grid: --app {tmp_path} is not this project's Flower app folder" in err
    assert cli.main(["grid", "status", "smoke", "--app", str(ROOT), "--results-dir", str(tmp_path / "r")]) == 0
    assert "runs finished in" in capsys.readouterr().out
    monkeypatch.chdir(ROOT)  # run in a clone: found there
    assert app_folder.app_dir() == ROOT


def test_superlink_without_flower_1_39_says_so_in_one_line(monkeypatch, capsys):
    import flwr

    monkeypatch.setattr(flwr, "__version__", "1.40.0")
    assert cli.main(["superlink", "--help"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fedgma superlink: needs flwr 1.39") and "fedgma[deploy]" in err


def test_the_installed_wheel_runs_the_fedgma_command_outside_a_checkout(distributions, tmp_path):
    """From the wheel's files alone (no checkout, no app folder): the command and a tool that
    needs no app folder work; one that does takes it from --app."""
    _, wheel = distributions
    installed = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(installed)
    work = tmp_path / "elsewhere"
    work.mkdir()

    def fedgma(*argv: str) -> subprocess.CompletedProcess:
        code = f"import sys; sys.path.insert(0, {str(installed)!r}); from fedgma.cli import main; sys.exit(main())"
        return subprocess.run([sys.executable, "-c", code, *argv], cwd=work, capture_output=True, text=True)

    helped = fedgma("--help")
    assert helped.returncode == 0 and "superlink" in helped.stdout and "compose" in helped.stdout
    assert fedgma("compose", "run", "--help").returncode == 0
    toy = fedgma("toy", str(work / "toy.png"))
    assert toy.returncode == 0 and (work / "toy.png").is_file(), toy.stderr
    status = fedgma("grid", "status", "smoke", "--results-dir", str(work / "r"))
    assert status.returncode == 2 and status.stderr.count("\n") == 1 and "--app DIR" in status.stderr
    status = fedgma("grid", "status", "smoke", "--results-dir", str(work / "r"), "--app", str(ROOT))
    assert status.returncode == 0 and "runs finished in" in status.stdout, status.stderr


def test_fedgma_version_prints_the_packages_version(capsys):
    import tomllib

    import fedgma

    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert capsys.readouterr().out == f"fedgma {version}\n" and fedgma.__version__ == version
