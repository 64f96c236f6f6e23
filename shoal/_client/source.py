"""Package the source that defines an app: the script file, or the whole top-level package.

The result is a deterministic tarball, uploaded once by its sha256; containers import from it, never from
the caller's working directory.
"""

from __future__ import annotations

import functools
import hashlib
import io
import sys
import tarfile
from pathlib import Path

from ..exception import InvalidError

MAX_SOURCE_BYTES = 64 * 1024 * 1024
SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".mypy_cache", ".pytest_cache"}


def container_module_name(module_name: str) -> str:
    """`__main__` is imported by its file's stem in the container, so its `if __name__ == "__main__"` block
    does not run there."""
    if module_name == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise InvalidError("cannot find the file of __main__; use serialized=True")
        return Path(main_file).stem
    return module_name


def _files_for(module_name: str) -> list[tuple[str, Path]]:
    module = sys.modules.get(module_name)
    if module is None:
        raise InvalidError(f"module {module_name!r} is not imported")
    top = module_name.split(".")[0] if module_name != "__main__" else "__main__"
    if top == module_name or module_name == "__main__":
        path = getattr(module, "__file__", None)
        if not path:
            raise InvalidError(f"module {module_name!r} has no source file; use serialized=True")
        path = Path(path)
        if path.name != "__init__.py":
            return [(f"{container_module_name(module_name)}.py", path)]
        root = path.parent
    else:
        top_module = sys.modules[top]
        root = Path(getattr(top_module, "__file__", None) or list(top_module.__path__)[0])
        if root.is_file():
            root = root.parent
    files = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]):
            continue
        files.append((str(Path(root.name) / rel), p))
    return files


@functools.lru_cache(maxsize=64)
def pack_module(module_name: str) -> tuple[str, bytes]:
    """(sha256, tarball) of the source that defines `module_name`."""
    return pack_files(_files_for(module_name), f"source of {module_name!r}")


def pack_files(files: list[tuple[str, Path]], what: str, limit: int = MAX_SOURCE_BYTES,
               keep_exec: bool = False) -> tuple[str, bytes]:
    """(sha256, deterministic tarball) of `(arcname, path)` pairs: no timestamps or owners, so equal content
    gives an equal hash. `keep_exec` keeps the executable bit (image files)."""
    buf = io.BytesIO()
    total = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for arcname, path in files:
            data = path.read_bytes()
            total += len(data)
            if total > limit:
                raise InvalidError(f"{what} is larger than {limit} bytes")
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o755 if keep_exec and path.stat().st_mode & 0o111 else 0o644
            tar.addfile(info, io.BytesIO(data))
    blob = buf.getvalue()
    return hashlib.sha256(blob).hexdigest(), blob
