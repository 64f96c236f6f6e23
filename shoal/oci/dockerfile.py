"""Dockerfile parsing: text (+ build args) -> a list of typed steps that a builder runs in order.

A pure function: no file is read, nothing runs. What it accepts is the part of the Dockerfile language a
single-stage build of local files needs: FROM, RUN (shell and exec form), COPY/ADD of local files, ENV (both
forms), ARG (defaults, overridden by build_args), WORKDIR, USER, ENTRYPOINT/CMD (recorded for the image config);
LABEL, EXPOSE and MAINTAINER are accepted and ignored. Anything else is an error naming its line, rather than a
build that silently differs from Docker's.

Variables are substituted as Docker does: in FROM (with the ARGs declared before it), COPY/ADD, ENV, ARG, WORKDIR
and USER — `$X`, `${X}`, `${X:-default}`, `${X:+alt}`, never inside single quotes, `\\$` for a literal `$`. RUN,
CMD and ENTRYPOINT are left to the shell at run time; a RUN step carries the ARG values in scope (`build_env`),
which the builder puts in that command's environment only (they do not persist in the image, as in Docker).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping


class DockerfileError(ValueError):
    """The message names the line: `Dockerfile line 7: ...`."""


@dataclasses.dataclass(frozen=True)
class From:
    image: str
    line: int
    alias: str = ""
    platform: str = ""


@dataclasses.dataclass(frozen=True)
class Run:
    command: str | tuple[str, ...]  # str: shell form (run with /bin/sh -c); tuple: exec form
    line: int
    build_env: tuple[tuple[str, str], ...] = ()


@dataclasses.dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]  # relative to the build context
    dest: str
    line: int
    add: bool = False  # ADD: a local tar archive source is unpacked at dest (Docker's rule); COPY copies as is
    chown: str = ""  # recorded; the builder may apply it
    chmod: str = ""


@dataclasses.dataclass(frozen=True)
class Env:
    vars: tuple[tuple[str, str], ...]
    line: int


@dataclasses.dataclass(frozen=True)
class Workdir:
    path: str
    line: int


@dataclasses.dataclass(frozen=True)
class User:
    user: str
    line: int


@dataclasses.dataclass(frozen=True)
class Entrypoint:
    command: str | tuple[str, ...]
    line: int


@dataclasses.dataclass(frozen=True)
class Cmd:
    command: str | tuple[str, ...]
    line: int


Step = From | Run | Copy | Env | Workdir | User | Entrypoint | Cmd
_IGNORED = {"LABEL", "EXPOSE", "MAINTAINER"}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DIRECTIVE = re.compile(r"^#\s*([A-Za-z]+)\s*=\s*(\S+)\s*$")


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Joins continuation lines; drops comments and blank lines. Returns (first line number, text)."""
    escape = "\\"
    lines = text.splitlines()
    # parser directives: `# escape=`` ` etc., only at the very top, before any comment, blank line or instruction
    for raw in lines:
        m = _DIRECTIVE.match(raw.strip())
        if not m:
            break
        if m.group(1).lower() == "escape":
            if m.group(2) not in ("\\", "`"):
                raise DockerfileError(f"Dockerfile: escape directive must be \\ or `, not {m.group(2)!r}")
            escape = m.group(2)
    out: list[tuple[int, str]] = []
    buf: list[str] = []
    start = 0
    for number, raw in enumerate(lines, 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and buf):
            continue  # comments (also inside a continuation) and empty continuation lines are dropped
        if not stripped:
            continue
        if not buf:
            start = number
        body = raw.rstrip()
        if body.endswith(escape):
            buf.append(body[:-1])
            continue
        buf.append(body)
        out.append((start, " ".join(part.strip() for part in buf if part.strip())))
        buf = []
    if buf:
        out.append((start, " ".join(part.strip() for part in buf if part.strip())))
    return out


def _words(text: str, env: Mapping[str, str], line: int, *, substitute: bool = True, escape: str = "\\") -> list[str]:
    """Splits on unquoted whitespace, removing quotes, expanding variables outside single quotes."""
    words: list[str] = []
    cur: list[str] = []
    in_word = False
    quote = ""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'":
            if c == "'":
                quote = ""
            else:
                cur.append(c)
            i += 1
            continue
        if c == escape and i + 1 < len(text):
            cur.append(text[i + 1])
            in_word = True
            i += 2
            continue
        if c == '"':
            quote = "" if quote == '"' else '"'
            in_word = True
            i += 1
            continue
        if c == "'" and not quote:
            quote = "'"
            in_word = True
            i += 1
            continue
        if c == "$" and substitute:
            value, i = _expand(text, i, env, line)
            cur.append(value)
            in_word = True
            continue
        if c.isspace() and not quote:
            if in_word:
                words.append("".join(cur))
                cur, in_word = [], False
            i += 1
            continue
        cur.append(c)
        in_word = True
        i += 1
    if quote:
        raise DockerfileError(f"Dockerfile line {line}: unterminated {quote} quote")
    if in_word:
        words.append("".join(cur))
    return words


def _expand(text: str, i: int, env: Mapping[str, str], line: int) -> tuple[str, int]:
    """`$NAME` / `${NAME}` / `${NAME:-word}` / `${NAME:+word}` at text[i] == '$'; returns (value, next index)."""
    if i + 1 < len(text) and text[i + 1] == "{":
        end = text.find("}", i + 2)
        if end < 0:
            raise DockerfileError(f"Dockerfile line {line}: missing '}}' in {text[i:]!r}")
        inner = text[i + 2:end]
        name, op, word = inner, "", ""
        for candidate in (":-", ":+"):
            if candidate in inner:
                name, word = inner.split(candidate, 1)
                op = candidate
                break
        if not _NAME.match(name):
            raise DockerfileError(f"Dockerfile line {line}: bad variable ${{{inner}}}")
        value = env.get(name)
        if op == ":-":
            result = value if value else word
        elif op == ":+":
            result = word if value else ""
        else:
            result = value or ""
        return result, end + 1
    m = re.compile(r"[A-Za-z_][A-Za-z0-9_]*").match(text, i + 1)
    if not m:
        return "$", i + 1
    return env.get(m.group(0), ""), m.end()


def _json_words(body: str, env: Mapping[str, str], line: int) -> list[str]:
    """COPY/ADD's JSON form (for paths with spaces); variables are still substituted in each element."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return _words(body, env, line)
    if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
        raise DockerfileError(f"Dockerfile line {line}: the JSON form takes an array of strings")
    out = []
    for item in parsed:
        parts, i = [], 0
        while i < len(item):
            if item[i] == "$":
                value, i = _expand(item, i, env, line)
                parts.append(value)
            else:
                parts.append(item[i])
                i += 1
        out.append("".join(parts))
    return out


def _command(rest: str) -> str | tuple[str, ...]:
    """Exec form (a JSON array of strings) or shell form (the text as written)."""
    if rest.startswith("["):
        try:
            parsed = json.loads(rest)
        except ValueError:
            return rest  # Docker runs a malformed JSON array as a shell command too
        if isinstance(parsed, list) and all(isinstance(x, str) for x in parsed):
            return tuple(parsed)
    return rest


def _flags(words: list[str], allowed: set[str], line: int, instruction: str) -> tuple[dict[str, str], list[str]]:
    flags: dict[str, str] = {}
    while words and words[0].startswith("--"):
        key, _, value = words.pop(0)[2:].partition("=")
        if key not in allowed:
            raise DockerfileError(f"Dockerfile line {line}: {instruction} --{key} is not supported")
        flags[key] = value
    return flags, words


def parse(text: str, build_args: Mapping[str, str] | None = None) -> list[Step]:
    """The steps of a single-stage Dockerfile, with variables substituted (see the module docstring)."""
    build_args = dict(build_args or {})
    global_args: dict[str, str] = {}  # ARGs before FROM: usable in FROM lines only
    args: dict[str, str] = {}  # ARGs declared in the stage (with their values)
    env: dict[str, str] = {}  # ENV so far: visible to later substitutions
    steps: list[Step] = []
    seen_from = False
    for line, logical in _logical_lines(text):
        instruction, _, rest = logical.partition(" ")
        instruction = instruction.upper()
        rest = rest.strip()
        if rest.startswith("<<"):
            raise DockerfileError(f"Dockerfile line {line}: heredocs ({instruction} <<…) are not supported")
        scope = {**args, **env}  # ENV wins over ARG of the same name, as in Docker
        if instruction == "ARG":
            for word in _words(rest, scope if seen_from else global_args, line) or [""]:
                name, has_default, default = word.partition("=")
                if not _NAME.match(name):
                    raise DockerfileError(f"Dockerfile line {line}: ARG needs a name, got {word!r}")
                if not seen_from:
                    global_args[name] = build_args.get(name, default)
                elif name in build_args:
                    args[name] = build_args[name]
                elif has_default:
                    args[name] = default
                else:  # re-declared after FROM: takes the global default, if any
                    args[name] = global_args.get(name, "")
            continue
        if instruction != "FROM" and not seen_from:
            raise DockerfileError(f"Dockerfile line {line}: {instruction} before FROM (only ARG may come first)")
        if instruction == "FROM":
            if seen_from:
                raise DockerfileError(f"Dockerfile line {line}: a second FROM (multi-stage builds) is not supported")
            flags, words = _flags(_words(rest, global_args, line), {"platform"}, line, "FROM")
            if len(words) == 3 and words[1].upper() == "AS":
                words = [words[0], words[2]]
            elif len(words) != 1:
                raise DockerfileError(f"Dockerfile line {line}: FROM takes one image (and `AS name`), got {rest!r}")
            seen_from = True
            steps.append(From(image=words[0], line=line, alias=words[1] if len(words) > 1 else "",
                              platform=flags.get("platform", "")))
        elif instruction == "RUN":
            if rest.startswith("--"):
                raise DockerfileError(f"Dockerfile line {line}: RUN flags ({rest.split()[0]}) are not supported")
            if not rest:
                raise DockerfileError(f"Dockerfile line {line}: RUN needs a command")
            steps.append(Run(command=_command(rest), line=line, build_env=tuple(sorted(args.items()))))
        elif instruction in ("COPY", "ADD"):
            m = re.match(r"((?:--\S+\s+)*)(.*)", rest, re.S)
            assert m is not None
            flags, _ = _flags(m.group(1).split(), {"chown", "chmod", "link"}, line, instruction)
            body = m.group(2)
            words = _json_words(body, scope, line) if body.startswith("[") else _words(body, scope, line)
            if len(words) < 2:
                raise DockerfileError(f"Dockerfile line {line}: {instruction} needs a source and a destination")
            for src in words[:-1]:
                if re.match(r"^[a-z][a-z0-9+.-]*://", src) or src.startswith("git@"):
                    raise DockerfileError(f"Dockerfile line {line}: {instruction} of a URL ({src}) is not supported: "
                                          "only files from the build context")
            steps.append(Copy(sources=tuple(words[:-1]), dest=words[-1], line=line, add=instruction == "ADD",
                              chown=flags.get("chown", ""), chmod=flags.get("chmod", "")))
        elif instruction == "ENV":
            words = _words(rest, scope, line)
            pairs: list[tuple[str, str]] = []
            if words and "=" not in words[0]:  # legacy form: ENV NAME the rest of the line
                name, _, value = rest.partition(" ")
                value = " ".join(_words(value, scope, line))
                pairs.append((name, value))
            else:
                for word in words:
                    name, eq, value = word.partition("=")
                    if not eq:
                        raise DockerfileError(f"Dockerfile line {line}: ENV {word!r} is not NAME=value")
                    pairs.append((name, value))
            if not pairs:
                raise DockerfileError(f"Dockerfile line {line}: ENV needs NAME=value")
            for name, value in pairs:
                if not _NAME.match(name):
                    raise DockerfileError(f"Dockerfile line {line}: bad ENV name {name!r}")
                env[name] = value
            steps.append(Env(vars=tuple(pairs), line=line))
        elif instruction in ("WORKDIR", "USER"):
            words = _words(rest, scope, line)
            if len(words) != 1:
                raise DockerfileError(f"Dockerfile line {line}: {instruction} takes one argument, got {rest!r}")
            step = Workdir(path=words[0], line=line) if instruction == "WORKDIR" else User(user=words[0], line=line)
            steps.append(step)
        elif instruction in ("ENTRYPOINT", "CMD"):
            cls = Entrypoint if instruction == "ENTRYPOINT" else Cmd
            steps.append(cls(command=_command(rest), line=line))
        elif instruction in _IGNORED:
            continue
        else:
            raise DockerfileError(f"Dockerfile line {line}: {instruction} is not supported")
    if not seen_from:
        raise DockerfileError("Dockerfile: no FROM instruction")
    return steps
