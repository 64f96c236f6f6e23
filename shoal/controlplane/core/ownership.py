"""Which apps this control plane may act for. Alone (the default) it owns every app; as one of several replicas
(controlplane/replicas.py) it owns the apps whose lease it holds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from ..replicas import Replicas
    from ..store import Store


class AppOwnership(Protocol):
    shared: bool  # several control planes share the store: apps this one does not own exist

    def owns(self, app_id: str) -> bool: ...
    async def created(self, app_id: str) -> None: ...  # a new app: whoever creates it owns it
    async def stopped(self, app_id: str, ticket: int) -> None: ...  # `ticket`: the write that stopped it


class SoleOwner:
    """The only control plane: every app is its own."""

    shared = False

    def owns(self, app_id: str) -> bool:
        return True

    async def created(self, app_id: str) -> None:
        pass

    async def stopped(self, app_id: str, ticket: int) -> None:
        pass


class LeasedOwnership:
    """One of several replicas: apps are owned by lease."""

    shared = True

    def __init__(self, replicas: Replicas, store: Store) -> None:
        self.replicas = replicas
        self.store = store

    def owns(self, app_id: str) -> bool:
        return self.replicas.owns(app_id)

    async def created(self, app_id: str) -> None:
        await self.replicas.claim_new(app_id)

    async def stopped(self, app_id: str, ticket: int) -> None:
        await self.store.flushed(ticket)  # no other replica may take it over as a running app
        await self.replicas.forget(app_id)
