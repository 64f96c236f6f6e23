"""`Secret`: environment variables handed to containers. Named secrets live in the control plane."""

from __future__ import annotations

import os
from pathlib import Path

from ._client.aio import Plan, rpc
from ._spec.definitions import SecretRef
from ._spec.limits import name_problem
from ._spec.secrets import KEY_RE, MAX_KEY, MAX_VALUE
from .exception import InvalidError, NotFoundError


def _check(env: dict[str, str | None]) -> dict[str, str | None]:
    if not isinstance(env, dict):
        raise InvalidError(f"a secret must be a dict of str to str, got {type(env).__name__}")
    for k, v in env.items():
        if not isinstance(k, str) or not KEY_RE.match(k) or len(k) > MAX_KEY:
            raise InvalidError(f"invalid secret key {k!r}: must match [A-Za-z_][A-Za-z0-9_]* (≤ {MAX_KEY} chars)")
        if v is not None and (not isinstance(v, str) or len(v) > MAX_VALUE):
            raise InvalidError(f"secret value for {k!r} must be a string of at most {MAX_VALUE} characters")
    return dict(env)


class _SecretManager:
    """`Secret.objects.create / delete / list`: named secrets, stored encrypted by the control plane."""

    @rpc
    def create(self, name: str, env_dict: dict[str, str], *, allow_existing: bool = False,
               environment_name: str | None = None, client: object = None) -> Plan:
        if problem := name_problem(name, "Secret"):
            raise InvalidError(problem)
        _check(env_dict)
        yield ("POST", "/v1/secrets", {"name": name, "env": env_dict, "allow_existing": allow_existing})

    @rpc
    def delete(self, name: str, *, allow_missing: bool = False, environment_name: str | None = None,
               client: object = None) -> Plan:
        try:
            yield ("DELETE", f"/v1/secrets/{name}", None)
        except NotFoundError:
            if not allow_missing:
                raise

    @rpc
    def list(self, *, max_objects: int | None = None, created_before: object = None,
             environment_name: str = "", client: object = None) -> Plan:
        resp = yield ("GET", "/v1/secrets", None)
        return [Secret({}, name=r["name"]) for r in resp["secrets"][:max_objects]]


class Secret:
    """A set of environment variables. Later secrets in a function's list override earlier ones."""

    objects = _SecretManager()

    def __init__(self, env: dict[str, str | None] | None = None, *, name: str | None = None,
                 required_keys: list[str] | None = None) -> None:
        self._env = _check(env or {})
        self._name = name
        self._required_keys = list(required_keys or [])

    def __repr__(self) -> str:
        label = f"name={self._name!r}" if self._name else f"keys={sorted(self._env)}"
        return f"Secret({label})"

    @property
    def name(self) -> str | None:
        return self._name

    @staticmethod
    def from_dict(env_dict: dict[str, str | None] = {}) -> Secret:  # noqa: B006 - Modal's signature
        return Secret(env_dict)

    @staticmethod
    def from_local_environ(env_keys: list[str]) -> Secret:
        """The caller's values of `env_keys`. Inside a container (which imports the module again without the
        caller's environment) an empty secret, as Modal's."""
        if "SHOAL_CONTAINER_ID" in os.environ:
            return Secret({})
        missing = [k for k in env_keys if k not in os.environ]
        if missing:
            raise InvalidError(f"local environment variable(s) not set: {', '.join(missing)}")
        return Secret({k: os.environ[k] for k in env_keys})

    @staticmethod
    def from_dotenv(path: str | Path | None = None, *, filename: str = ".env") -> Secret:
        """Read `filename` from the working directory (path=None) or from `path`'s directory and its parents."""
        start = Path.cwd() if path is None else Path(path).resolve()
        if start.is_file():
            start = start.parent
        candidates = [start / filename] if path is None else [d / filename for d in (start, *start.parents)]
        for candidate in candidates:
            if candidate.is_file():
                return Secret(_parse_dotenv(candidate.read_text()))
        return Secret({})

    @staticmethod
    def from_name(name: str, *, environment_name: str | None = None, required_keys: list[str] = [],  # noqa: B006
                  client: object = None) -> Secret:
        """A named secret, resolved by the control plane when a container starts."""
        if problem := name_problem(name, "Secret"):
            raise InvalidError(problem)
        return Secret({}, name=name, required_keys=required_keys)

    def env(self) -> dict[str, str | None]:
        return dict(self._env)

    @rpc
    def update(self, env_dict: dict[str, str]) -> Plan:
        """Change a named secret (dict.update semantics); containers started afterwards see the new values."""
        if not self._name:
            self._env.update(_check(env_dict))
            return
        yield ("POST", f"/v1/secrets/{self._name}/update", {"env": _check(env_dict)})

    def info(self) -> dict:
        return {"name": self._name, "keys": sorted(self._env) if not self._name else None}

    def to_ref(self) -> SecretRef:
        """Wire form: a name the control plane resolves at container start, or the values themselves."""
        if self._name:
            return SecretRef(name=self._name, required_keys=self._required_keys)
        return SecretRef(env={k: v for k, v in self._env.items() if v is not None})


def secret_refs(secrets: list[Secret]) -> list[SecretRef]:
    """A function's secrets in order; later ones override earlier ones when the container starts."""
    return [s.to_ref() for s in secrets]


def _parse_dotenv(text: str) -> dict[str, str | None]:
    env: dict[str, str | None] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        env[key.strip()] = value
    return env
