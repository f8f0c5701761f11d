"""Type-check probenet with mypy as installed: `probenet.agent`, `.collector`, `.v1`.

The repository keeps `agent/`, `collector/` and `proto/probenet/v1/` at its top; only the
install maps them under `probenet` (pyproject.toml, `[tool.setuptools.package-dir]`). mypy
cannot follow that mapping, so this lays out build/typecheck/probenet/ as a tree of links in
the installed shape (folders linked whole, so new modules are seen at once), runs mypy on it
(pyproject.toml's `mypy_path`), and maps the paths mypy reports back to the repository's.

    .venv/bin/python scripts/typecheck.py [mypy arguments]
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / "build" / "typecheck"
# Installed name (under probenet/) -> folder of the repository.
MAPPED = {"agent": "agent", "collector": "collector", "v1": "proto/probenet/v1"}


def lay_out_tree() -> None:
    """Make build/typecheck/probenet mirror the installed package, linking to the sources.

    Links are replaced one by one (never the whole folder), so two runs at once both work.
    """
    package = TREE / "probenet"
    package.mkdir(parents=True, exist_ok=True)
    links = {entry.name: entry for entry in (ROOT / "probenet").iterdir()
             if entry.name != "__pycache__"}
    links.update({name: ROOT / folder for name, folder in MAPPED.items()})
    for name, source in links.items():
        link, target = package / name, os.path.relpath(source, package)
        if link.is_symlink() and str(link.readlink()) == target:
            continue
        staged = package / f".{name}.{os.getpid()}"
        staged.symlink_to(target)
        staged.replace(link)
    for stale in package.iterdir():
        if stale.name not in links and not stale.name.startswith("."):
            stale.unlink()


def main() -> int:
    """Lay out the tree, run mypy, print its report with the repository's paths."""
    lay_out_tree()
    done = subprocess.run([sys.executable, "-m", "mypy", *sys.argv[1:]], cwd=ROOT,
                          capture_output=True, text=True, check=False)
    prefix = f"{TREE.relative_to(ROOT)}/probenet/"
    replacements = [(f"{prefix}{name}/", f"{folder}/") for name, folder in MAPPED.items()]
    replacements.append((prefix, "probenet/"))
    for stream, report in ((sys.stdout, done.stdout), (sys.stderr, done.stderr)):
        for old, new in replacements:
            report = report.replace(old, new)  # noqa: PLW2901 - the same report, mapped
        stream.write(report)
    return done.returncode


if __name__ == "__main__":
    sys.exit(main())
