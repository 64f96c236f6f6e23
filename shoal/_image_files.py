"""Local files of images, read when an app starts (never when an image is declared): content hashes, deterministic
tarballs, `ignore` patterns, and the build context of Dockerfile steps — the files their COPY/ADD lines name,
less what the .dockerignore (or `ignore`) leaves out.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import posixpath
import re
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatch, fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any

from .exception import InvalidError

MAX_LOCAL_BYTES = 1 << 30

def ignore_fn(ignore: Sequence[str] | Callable[[Path], bool]) -> Callable[[Path], bool]:
    """Patterns are matched against the path relative to the directory, dockerignore-style: `*` crosses `/`,
    a pattern matching a directory excludes what is inside it, and `!pattern` re-includes; last match wins."""
    if callable(ignore):
        return ignore
    if isinstance(ignore, str) or not all(isinstance(p, str) for p in ignore):
        raise InvalidError("`ignore` must be a list of patterns or a callable taking a Path")
    rules = [(p.startswith("!"), p.lstrip("!").strip().removeprefix("./").strip("/")) for p in ignore if p.strip()]

    def match(rel: Path) -> bool:
        text = rel.as_posix()
        prefixes = [text] + ["/".join(rel.parts[:i]) for i in range(1, len(rel.parts))]
        excluded = False
        for negated, pattern in rules:
            if any(fnmatch(p, pattern) for p in prefixes):
                excluded = not negated
        return excluded

    return match


# Content hashes of local files, keyed by (path, size, mtime): repeated `app.run()`s do not re-read them.
_file_hashes: dict[tuple[str, int, int], str] = {}
_tree_blobs: dict[tuple[Any, ...], tuple[str, bytes]] = {}


def hash_file(path: Path) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    sha = _file_hashes.get(key)
    if sha is None:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        sha = _file_hashes[key] = h.hexdigest()
    return sha


def pack_tree(files: list[tuple[str, Path]], what: str) -> tuple[str, bytes]:
    from ._client.source import pack_files

    key = tuple((arc, str(p), p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode & 0o111) for arc, p in files)
    hit = _tree_blobs.get(key)
    if hit is None:
        hit = pack_files(files, what, limit=MAX_LOCAL_BYTES, keep_exec=True)
        if len(_tree_blobs) > 64:
            _tree_blobs.clear()
        _tree_blobs[key] = hit
    return hit


def walk(root: Path, ignore: Callable[[Path], bool], prefix: str = "") -> list[tuple[str, Path]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel = path.relative_to(root)
            if not path.is_file() or ignore(rel):
                continue
            files.append((prefix + rel.as_posix(), path))
    return files


class AutoDockerIgnore:
    """`ignore=AUTO_DOCKERIGNORE` (the default of the Dockerfile methods): use the build's .dockerignore file."""

    def __repr__(self) -> str:
        return "AUTO_DOCKERIGNORE"


AUTO_DOCKERIGNORE = AutoDockerIgnore()


def dockerignore_fn(method: str, ignore: Any) -> Callable[[Path], bool] | None:
    """None: AUTO_DOCKERIGNORE (the .dockerignore is found when the context is read); else `ignore` checked."""
    if ignore is AUTO_DOCKERIGNORE:
        return None
    try:
        return ignore_fn(ignore)
    except InvalidError as exc:
        raise InvalidError(f"Image.{method}: {exc}") from None


def dockerignore_patterns(context_dir: Path, dockerfile: Path | None) -> Callable[[Path], bool]:
    """The .dockerignore of a build: `<Dockerfile name>.dockerignore` or `.dockerignore` next to the Dockerfile,
    else `.dockerignore` in the context directory (the first that exists inside the context directory)."""
    candidates = [context_dir / ".dockerignore"]
    if dockerfile is not None:
        candidates[:0] = [dockerfile.parent / f"{dockerfile.name}.dockerignore", dockerfile.parent / ".dockerignore"]
    for path in candidates:
        if path.is_file() and path.resolve().is_relative_to(context_dir.resolve()):
            lines = path.read_text().splitlines()
            return ignore_fn([x for x in lines if x.strip() and not x.lstrip().startswith("#")])
    return ignore_fn([])


def copy_sources(method: str, text: str, build_args: dict[str, str]) -> list[tuple[str, int]]:
    """(source, line) of every COPY/ADD of a Dockerfile (InvalidError naming the line if it does not parse)."""
    from .oci import dockerfile as syntax

    try:
        steps = syntax.parse(text, build_args)
    except syntax.DockerfileError as exc:
        raise InvalidError(f"Image.{method}: {exc}") from None
    return [(src, step.line) for step in steps if isinstance(step, syntax.Copy) for src in step.sources]


def source_pattern(method: str, source: str, line: int) -> list[str]:
    """A COPY source as path components relative to the context ([] for the whole context)."""
    norm = posixpath.normpath(source.lstrip("/") or ".")
    if norm == ".." or norm.startswith("../"):
        raise InvalidError(f"Image.{method}: COPY source {source!r} (line {line}) is outside the build context")
    return [] if norm == "." else norm.split("/")


def selected(parts: Sequence[str], pattern: list[str]) -> bool:
    """A context path is selected by a source pattern it matches, or that matches one of its directories."""
    return len(parts) >= len(pattern) and all(fnmatchcase(p, q) for p, q in zip(parts, pattern, strict=False))


def context_files(method: str, context_dir: Path, sources: list[tuple[str, int]],
                  ignore: Callable[[Path], bool], extra: Mapping[str, Path]) -> list[tuple[str, Path]]:
    """The build context a Dockerfile's COPY/ADD lines read: the files of `context_dir` their sources select,
    less the ignored ones, plus `extra` (context_files). Only directories a source can select are walked."""
    patterns = [(src, line, source_pattern(method, src, line)) for src, line in sources]
    found: dict[str, Path] = {}
    if patterns:
        if not context_dir.is_dir():
            raise InvalidError(f"Image.{method}: context directory {context_dir} not found")
        for dirpath, dirnames, filenames in os.walk(context_dir, followlinks=True):
            rel_dir = Path(dirpath).relative_to(context_dir).parts
            dirnames[:] = sorted(d for d in dirnames if any(
                could_select((*rel_dir, d), p) for _, _, p in patterns))
            for name in sorted(filenames):
                rel = Path(*rel_dir, name)
                path = Path(dirpath) / name
                if path.is_file() and any(selected(rel.parts, p) for _, _, p in patterns) and not ignore(rel):
                    found[rel.as_posix()] = path
    for arc, path in extra.items():
        if not path.is_file():
            raise InvalidError(f"Image.{method}: context file {path} not found")
        found[arc] = path
    for src, line, pattern in patterns:
        if not any(selected(PurePosixPath(arc).parts, pattern) for arc in found):
            raise InvalidError(f"Image.{method}: COPY source {src!r} (line {line}) matches no file in the build "
                               f"context {context_dir} (or all its files are ignored)")
    return sorted(found.items())


def could_select(dir_parts: Sequence[str], pattern: list[str]) -> bool:
    """Whether a directory may hold files a pattern selects: its path matches the pattern's first components, or
    the pattern matches the directory (or one above it)."""
    n = min(len(dir_parts), len(pattern))
    return all(fnmatchcase(p, q) for p, q in zip(dir_parts[:n], pattern[:n], strict=True))


def command_sources(commands: list[str], build_args: dict[str, str]) -> list[tuple[str, int]]:
    """Checks `dockerfile_commands` now (no FROM; instructions shoal builds) and returns their COPY/ADD sources."""
    from .oci import dockerfile as syntax

    try:
        steps = syntax.parse("\n".join(["FROM base", *commands]), build_args)
    except syntax.DockerfileError as exc:
        message = re.sub(r"Dockerfile line (\d+)", lambda m: f"line {int(m.group(1)) - 1} of the commands", str(exc))
        if "second FROM" in message:
            message = "the commands must not contain FROM (the image so far is their base)"
        raise InvalidError(f"Image.dockerfile_commands: {message}") from None
    return [(src, step.line - 1) for step in steps if isinstance(step, syntax.Copy) for src in step.sources]


def context_blob(method: str, context_dir: Path, sources: list[tuple[str, int]],
                 ignore: Callable[[Path], bool], extra: Mapping[str, Path]) -> tuple[str | None, dict[str, Any]]:
    """(sha256 of the context tarball, {sha: read}) — (None, {}) when the build reads no local file."""
    if not sources and not extra:
        return None, {}
    files = context_files(method, context_dir, sources, ignore, extra)
    sha, blob = pack_tree(files, f"Image.{method} build context")
    return sha, {sha: lambda: blob}


def local_blob(step: dict[str, Any], local: dict[str, Any]) -> tuple[str, Callable[[], bytes]]:
    """The content hash and reader of a file step's local files (one file, a tree, or modules' sources)."""
    kind = step["kind"]
    if "file" in local:
        path: Path = local["file"]
        if not path.is_file():
            raise InvalidError(f"Image.{kind}: local file {path} not found")
        step["mode"] = 0o755 if path.stat().st_mode & 0o111 else 0o644
        return hash_file(path), path.read_bytes
    if "dir" in local:
        root: Path = local["dir"]
        if not root.is_dir():
            raise InvalidError(f"Image.{kind}: local directory {root} not found")
        files = walk(root, local["ignore"])
    else:
        files = []
        for name in local["modules"]:
            try:
                spec = importlib.util.find_spec(name)
            except (ImportError, ValueError) as exc:
                raise InvalidError(f"Image.add_local_python_source: cannot find module {name!r}: {exc}") from exc
            if spec is None:
                raise InvalidError(f"Image.add_local_python_source: module {name!r} not found")
            arc = name.replace(".", "/")
            if spec.submodule_search_locations:
                for location in spec.submodule_search_locations:
                    files += walk(Path(location), local["ignore"], prefix=arc + "/")
            elif spec.origin and spec.origin.endswith(".py"):
                files.append((arc + ".py", Path(spec.origin)))
            else:
                raise InvalidError(f"Image.add_local_python_source: {name!r} is not a local Python source module "
                                   f"({spec.origin})")
    sha, blob = pack_tree(files, f"Image.{kind} content")
    return sha, lambda: blob
