"""Imports a script of the repository as a module (scripts are single files, not a package): `load_script("name")`
for `training_scripts/name.py`, `load_script("scripts/name")` for any other folder."""

import importlib.util
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "training_scripts"


def load_script(name: str):
    """As `python <folder>/<name>.py` runs it: its folder is importable (ablate.py imports the tiny build)."""
    path = (REPO / f"{name}.py") if "/" in name else SCRIPTS / f"{name}.py"
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
