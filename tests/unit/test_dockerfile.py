"""shoal.oci.dockerfile: Dockerfile text -> typed steps (a pure function)."""

from __future__ import annotations

import pytest

from shoal.oci.dockerfile import Cmd, Copy, DockerfileError, Entrypoint, Env, From, Run, User, Workdir, parse


def test_a_typical_dockerfile() -> None:
    text = """
# syntax comment
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS build
ARG VERSION=1.0
ENV APP_HOME=/app LANG="C.UTF-8"
ENV LEGACY the rest  of the line
WORKDIR $APP_HOME
COPY --chown=1000:1000 requirements.txt ./req.txt
ADD ["data dir/", "/opt/data/"]
RUN apt-get update && \\
    # a comment inside a continuation is dropped
    apt-get install -y curl
RUN ["python3", "-c", "print(1)"]
USER nobody
LABEL maintainer="x"
EXPOSE 8080
ENTRYPOINT ["python3", "-m", "app"]
CMD --port 8080
"""
    steps = parse(text)
    assert steps == [
        From(image="debian:bookworm-slim", line=4, alias="build"),
        Env(vars=(("APP_HOME", "/app"), ("LANG", "C.UTF-8")), line=6),
        Env(vars=(("LEGACY", "the rest of the line"),), line=7),
        Workdir(path="/app", line=8),
        Copy(sources=("requirements.txt",), dest="./req.txt", line=9, chown="1000:1000"),
        Copy(sources=("data dir/",), dest="/opt/data/", line=10, add=True),
        Run(command="apt-get update && apt-get install -y curl", line=11, build_env=(("VERSION", "1.0"),)),
        Run(command=("python3", "-c", "print(1)"), line=14, build_env=(("VERSION", "1.0"),)),
        User(user="nobody", line=15),
        Entrypoint(command=("python3", "-m", "app"), line=18),
        Cmd(command="--port 8080", line=19),
    ]


def test_build_args_override_defaults_and_reach_from() -> None:
    text = "ARG TAG=3.11\nFROM python:${TAG}-slim\nARG TAG\nARG MODE=dev\nRUN echo $MODE\nCOPY app-${MODE}.txt /x\n"
    steps = parse(text, build_args={"TAG": "3.12", "MODE": "prod"})
    assert steps[0] == From(image="python:3.12-slim", line=2)
    assert steps[1] == Run(command="echo $MODE", line=5, build_env=(("MODE", "prod"), ("TAG", "3.12")))
    assert steps[2] == Copy(sources=("app-prod.txt",), dest="/x", line=6)


def test_an_arg_redeclared_after_from_takes_the_global_default() -> None:
    steps = parse("ARG V=1\nFROM scratch\nARG V\nRUN true\n")
    assert steps[1].build_env == (("V", "1"),)
    # without redeclaring it, a global ARG is not in scope after FROM (Docker's rule)
    assert parse("ARG V=1\nFROM scratch\nRUN true\n")[1].build_env == ()


def test_substitution_forms() -> None:
    steps = parse("FROM scratch\nENV A=x\nENV B=${A:-d} C=${NOPE:-d} D=${A:+set} E=${NOPE:+set} F='$A' G=\\$A\n")
    assert steps[2] == Env(vars=(("B", "x"), ("C", "d"), ("D", "set"), ("E", ""), ("F", "$A"), ("G", "$A")), line=3)


def test_env_is_visible_to_later_instructions_but_not_run() -> None:
    steps = parse("FROM scratch\nENV DIR=/srv\nWORKDIR $DIR/app\nRUN cd $DIR\n")
    assert steps[2] == Workdir(path="/srv/app", line=3)
    assert steps[3] == Run(command="cd $DIR", line=4)  # the shell expands it at run time


def test_escape_directive_changes_the_continuation_character() -> None:
    steps = parse("# escape=`\nFROM scratch\nRUN echo a `\n  b\n")
    assert steps[1] == Run(command="echo a b", line=3)


@pytest.mark.parametrize(("text", "message"), [
    ("FROM a\nHEALTHCHECK CMD true\n", "line 2: HEALTHCHECK is not supported"),
    ("FROM a\nVOLUME /data\n", "line 2: VOLUME is not supported"),
    ("FROM a\nFROM b\n", "line 2: a second FROM"),
    ("RUN true\n", "line 1: RUN before FROM"),
    ("# only a comment\n", "no FROM"),
    ("FROM a\nCOPY --from=build /x /y\n", "line 2: COPY --from is not supported"),
    ("FROM a\nADD https://example.com/x.tgz /x\n", "line 2: ADD of a URL"),
    ("FROM a\nCOPY onlyone\n", "line 2: COPY needs a source and a destination"),
    ("FROM a\nRUN <<EOF\necho\nEOF\n", "line 2: heredocs"),
    ("FROM a\nRUN --mount=type=cache,target=/x true\n", "line 2: RUN flags"),
    ("FROM a\nENV 1BAD=x\n", "line 2: bad ENV name"),
    ("FROM a\nWORKDIR /a /b\n", "line 2: WORKDIR takes one argument"),
    ("FROM a\nENV A=\"unterminated\n", "line 2: unterminated"),
    ("FROM a b c d\n", "line 1: FROM takes one image"),
])
def test_errors_name_the_line(text: str, message: str) -> None:
    with pytest.raises(DockerfileError, match=message):
        parse(text)


def test_instructions_are_case_insensitive_and_continuations_join() -> None:
    steps = parse("from scratch\nrun a \\\n\n  b \\\n  c\ncopy x \\\n  /y\n")
    assert steps[1] == Run(command="a b c", line=2)
    assert steps[2] == Copy(sources=("x",), dest="/y", line=6)
