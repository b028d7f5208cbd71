"""Imports a file of `training_scripts/` as a module (the scripts are single files, not a package)."""

import importlib.util
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "training_scripts"


def load_script(name: str):
    """As `python training_scripts/<name>.py` runs it: its folder is importable (ablate.py imports the build)."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
