"""Writing user files so that nothing partial is ever left: a temporary name in the same folder, renamed at the end.

`atomic_write_file(path, write)` lets `write` fill a fresh temporary file beside `path` and then `os.replace`s it
onto `path`; on any failure (a full disk, an exception, Ctrl-C) the temporary file is removed and `path` is
untouched. Every writer gets its own temporary name, so two processes writing one path at once never mix their
bytes: the last one to finish wins, whole. `atomic_directory(path)` does the same for a folder (a pipeline's
`save_pretrained`). `check_output_file` finds an unwritable output path before the work that produces it starts.
"""

import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path


def temporary_sibling(path: Path) -> Path:
    """A fresh hidden name beside `path`: `.NAME.<pid>-<random>.tmp` (unique across processes and threads)."""
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def check_output_file(path, argument: str = "path") -> Path:
    """Checks that a file can be written at `path` (before any work is spent on it); returns it as a `Path`.

    Raises:
        TypeError: `path` is not a str / PathLike.
        ValueError: naming `argument`: `path` is a directory, a parent of it is a file, or its folder is not
            writable (read-only file system, no permission).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a file path (str or Path); got {type(path).__name__}.")
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"`{argument}` {str(path)!r} is a directory; pass a file path, e.g. {str(path / 'out.mp4')!r}."
        )
    folder = path.parent
    while not folder.exists() and folder != folder.parent:  # missing folders are created when writing
        folder = folder.parent
    if not folder.is_dir():
        raise ValueError(f"`{argument}` {str(path)!r}: {str(folder)!r} is a file, not a folder; pick another path.")
    probe = temporary_sibling(folder / path.name)
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        probe.unlink()
    except OSError as error:
        raise ValueError(
            f"`{argument}` {str(path)!r} cannot be written ({error.strerror} in {str(folder)!r}); pick a folder "
            "you can write to."
        ) from None
    return path


def atomic_write_file(path, write) -> None:
    """Calls `write(temporary_path)` (which creates and fills that file), then renames it onto `path`.

    The folder of `path` is created when missing. On any failure the temporary file is removed and the error
    re-raised; `path` keeps its previous content (or stays absent).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def atomic_write_text(path, text: str) -> None:
    atomic_write_file(path, lambda temporary: Path(temporary).write_text(text, encoding="utf-8"))


@contextmanager
def atomic_directory(path):
    """Yields a fresh temporary folder beside `path` to fill; when the block succeeds, its content goes to `path`.

    A new (or empty) `path` is the temporary folder renamed: all or nothing. Into an existing folder, each top-level
    entry is swapped in by a rename (a component folder of a pipeline is replaced whole, never merged), files the
    block did not write are kept, and the top-level files (`model_index.json`) go last. When the block fails, the
    temporary folder is removed and `path` is untouched.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{str(path)!r} is a file; pass a folder path to save into.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_sibling(path)
    temporary.mkdir()
    try:
        yield temporary
        try:
            os.replace(temporary, path)  # succeeds when `path` is absent or an empty folder
            return
        except OSError:
            if not path.is_dir():
                raise
        entries = sorted(temporary.iterdir(), key=lambda entry: (entry.is_file(), entry.name))  # folders first
        for entry in entries:
            target = path / entry.name
            if entry.is_dir() and target.is_dir():
                retired = temporary_sibling(target)
                os.replace(target, retired)
                os.replace(entry, target)
                shutil.rmtree(retired, ignore_errors=True)
            else:
                os.replace(entry, target)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
