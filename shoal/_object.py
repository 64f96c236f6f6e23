"""Base for storage objects (Dict, Queue, Volume): lazy lookup by name, pickling by reference, ephemeral objects,
and the `objects` manager. Their operations are Plans (`shoal._client.aio`)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, TypeVar

from ._client.aio import Plan, Request, arun_plan, rpc, run_plan
from ._spec.limits import name_problem
from .exception import AlreadyExistsError, InvalidError, NotFoundError

T = TypeVar("T", bound="StorageObject")


class _Ephemeral:
    """`with X.ephemeral() as x:` / `async with …`: an unnamed object deleted on exit."""

    def __init__(self, cls: type[StorageObject]) -> None:
        self.cls = cls
        self.obj: StorageObject | None = None

    def __enter__(self) -> Any:
        self.obj = run_plan(_create_unnamed(self.cls))
        return self.obj

    def __exit__(self, *exc: Any) -> None:
        assert self.obj is not None
        self.obj._delete_by_id()

    async def __aenter__(self) -> Any:
        self.obj = await arun_plan(_create_unnamed(self.cls))
        return self.obj

    async def __aexit__(self, *exc: Any) -> None:
        assert self.obj is not None
        await self.obj._delete_by_id.aio()


class ObjectManager:
    """`X.objects.create / delete / list`."""

    def __init__(self, cls: type[StorageObject]) -> None:
        self.cls = cls

    def _create(self, name: str, allow_existing: bool) -> Plan:
        if problem := name_problem(name, self.cls.__name__):
            raise InvalidError(problem)
        resp = yield ("POST", "/v1/objects", {"kind": self.cls._kind, "name": name, "create_if_missing": True})
        if not resp["created"] and not allow_existing:
            raise AlreadyExistsError(f"{self.cls.__name__} {name!r} already exists")

    @rpc
    def create(self, name: str, *, allow_existing: bool = False, environment_name: str | None = None,
               client: Any = None) -> Plan:
        return (yield from self._create(name, allow_existing))

    @rpc
    def delete(self, name: str, *, allow_missing: bool = False, environment_name: str | None = None,
               client: Any = None) -> Plan:
        try:
            resp = yield ("POST", "/v1/objects", {"kind": self.cls._kind, "name": name})
            yield ("DELETE", f"/v1/objects/{resp['object_id']}", None)
        except NotFoundError:
            if not allow_missing:
                raise

    @rpc
    def list(self, *, max_objects: int | None = None, environment_name: str | None = None,
             client: Any = None) -> Plan:
        resp = yield ("GET", f"/v1/objects?kind={self.cls._kind}", None)
        return [self.cls(name=r["name"], object_id=r["object_id"]) for r in resp["objects"][:max_objects]]


class _ManagerDescriptor:
    def __get__(self, obj: Any, cls: type[StorageObject]) -> ObjectManager:
        return ObjectManager(cls)


class StorageObject:
    _kind = ""
    objects = _ManagerDescriptor()

    def __init__(self, *, name: str | None = None, object_id: str | None = None,
                 create_if_missing: bool = False) -> None:
        self._name = name
        self._object_id = object_id
        self._create_if_missing = create_if_missing

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._name or self._object_id!r})"

    def __reduce__(self) -> tuple:
        """Pickled by reference: a function receiving it talks to the same object."""
        return (_rebuild, (type(self), self._name, self._object_id, self._create_if_missing))

    @property
    def name(self) -> str | None:
        return self._name

    @property
    def object_id(self) -> str | None:
        return self._object_id

    @classmethod
    def from_name(cls: type[T], name: str, *, environment_name: str | None = None,
                  create_if_missing: bool = False, client: Any = None) -> T:
        """A reference resolved on first use; NotFoundError then if it does not exist."""
        if problem := name_problem(name, cls.__name__):
            raise InvalidError(problem)
        return cls(name=name, create_if_missing=create_if_missing)

    @classmethod
    def from_id(cls: type[T], object_id: str, client: Any = None) -> T:
        return cls(object_id=object_id)

    @classmethod
    def ephemeral(cls, client: Any = None, environment_name: str | None = None, **_: Any) -> _Ephemeral:
        return _Ephemeral(cls)

    def _resolve(self) -> Generator[Request, dict[str, Any], str]:
        if self._object_id is None:
            resp = yield ("POST", "/v1/objects", {"kind": self._kind, "name": self._name,
                                                  "create_if_missing": self._create_if_missing})
            self._object_id = resp["object_id"]
        return self._object_id

    @rpc
    def _delete_by_id(self) -> Plan:
        object_id = yield from self._resolve()
        yield ("DELETE", f"/v1/objects/{object_id}", None)

    @rpc
    def info(self) -> Plan:
        object_id = yield from self._resolve()
        return {"name": self._name, "object_id": object_id}


def _create_unnamed(cls: type[StorageObject]) -> Plan:
    resp = yield ("POST", "/v1/objects", {"kind": cls._kind})
    return cls(object_id=resp["object_id"])


def _rebuild(cls: type[StorageObject], name: str | None, object_id: str | None,
             create_if_missing: bool = False) -> StorageObject:
    return cls(name=name, object_id=object_id, create_if_missing=create_if_missing)
