"""The wheel as a user installs it: one top-level package (`probenet`), and the commands run.

Built from a copy of the working tree with the dev environment's setuptools (no network),
installed into a fresh virtual environment whose only other entry is the dev environment's
site-packages (for the dependencies, not for probenet: the editable install there is a
`.pth` hook that a plain path entry does not run). Every command runs from an empty folder,
so nothing can come from the repository by accident.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from support.system import ROOT, free_port

pytestmark = pytest.mark.timeout(300)

_NOT_SOURCES = shutil.ignore_patterns(
    ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".hypothesis")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("source") / "probenet"
    shutil.copytree(ROOT, source, ignore=_NOT_SOURCES)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "--no-index", "-q", "-w", str(out), str(source)],
                   check=True, capture_output=True, text=True, timeout=240)
    (built,) = out.glob("probenet-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin folder."""
    env = tmp_path_factory.mktemp("venv") / "env"
    venv.create(env, with_pip=False)
    purelib = Path(sysconfig.get_path("purelib", vars={"base": str(env),
                                                       "platbase": str(env)}))
    # The dependencies come from the dev environment (a plain path: its .pth hooks do not run).
    (purelib / "dev-dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"),
                    "install", "--no-deps", "--no-index", "-q", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=120)
    return env / "bin"


def test_the_wheel_holds_only_the_probenet_namespace(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    top = {name.split("/", 1)[0] for name in names}
    assert top == {"probenet", f"{wheel.name.split('-')[0]}-{wheel.name.split('-')[1]}.dist-info"}
    for expected in ("probenet/cli.py", "probenet/agent/probes/http.py",
                     "probenet/collector/classify.py", "probenet/v1/probenet_pb2.py",
                     "probenet/v1/probenet.proto", "probenet/lab/fleet.py", "probenet/py.typed"):
        assert expected in names
    assert not [n for n in names if n.startswith(("agent/", "collector/", "proto/", "tests/"))]


def _run(bin_dir: Path, *args: str, cwd: Path,
         timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(bin_dir / "probenet"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False)


def test_installed_modules_come_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    code = ("import probenet.agent.config, probenet.collector.server, probenet.v1.probenet_pb2;"
            "import importlib.util as u;"
            "print(probenet.agent.config.__file__);"
            "print(u.find_spec('agent'), u.find_spec('collector'))")
    done = subprocess.run([str(installed / "python"), "-c", code], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=True)
    module_file, missing = done.stdout.splitlines()
    assert module_file.startswith(str(installed.parent))
    assert missing == "None None"


def test_help_check_and_demo_run_from_the_wheel(installed: Path, tmp_path: Path) -> None:
    done = _run(installed, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    for command in ("collector", "agent", "check", "demo"):
        assert command in done.stdout

    examples = ROOT / "deploy" / "examples"
    (tmp_path / "examples").mkdir()
    for example in examples.glob("*.yaml"):
        shutil.copy(example, tmp_path / "examples" / example.name)
    done = _run(installed, "check", *sorted(str(p) for p in (tmp_path / "examples").glob("*.yaml")),
                cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text("agent: {id: a, region: r}\ncollectors: [{address: 'x:1'}]\nprobes:\n"
                   "  - {name: p, kind: http, target: 'http://127.0.0.1/', colour: red}\n")
    done = _run(installed, "check", str(bad), cwd=tmp_path)
    assert done.returncode == 1
    assert f"{bad}:4:" in done.stdout + done.stderr

    done = _run(installed, "demo", "--duration", "5s", "--no-ui", "--port", str(free_port()),
                cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1].startswith("{")
