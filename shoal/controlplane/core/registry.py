"""What this control plane runs now: its apps, their function pools, the calls in memory, the containers.

One `Registry` is shared by the parts of the control plane (controlplane/build.py builds them); they read it
freely. Each map is written by the part that owns what is in it: apps by `Apps` (and `Recovery`, which rebuilds
them), pools here (`add_pool`, `drop_pool`), calls by `Calls` (and `Recovery`), containers by `Containers`.
"""

from __future__ import annotations

import collections

from ..._spec.definitions import FunctionDefinition
from .logs import AppLogs
from .model import AppState, Call, Container, Pool

STOPPED_LOGS_KEPT = 64  # recently stopped apps whose log tail a late follower can still read


class Registry:
    def __init__(self) -> None:
        self.apps: dict[str, AppState] = {}
        self.pools: dict[str, Pool] = {}
        self.calls: dict[str, Call] = {}
        self.containers: dict[str, Container] = {}
        # A follower may poll between the app's stop and its last read (under load, it does): it still gets the
        # tail, e.g. the build output of an image whose failure stopped the app.
        self.stopped_logs: collections.OrderedDict[str, AppLogs] = collections.OrderedDict()

    def add_pool(self, function_id: str, app_id: str, definition: FunctionDefinition) -> Pool:
        """A pool for a function of a running app, listed under the app (a variant — class parameter set,
        `with_options` — under its own key; its tag stays the base's)."""
        pool = Pool(function_id, app_id, definition)
        self.pools[function_id] = pool
        self.apps[app_id].functions[definition.variant_key or definition.tag] = function_id
        return pool

    def drop_pool(self, function_id: str) -> Pool | None:
        """Forget a pool (its function stopped): it takes nothing more."""
        pool = self.pools.pop(function_id, None)
        if pool is not None:
            pool.stopped = True
        return pool

    def forget_app(self, app_id: str) -> None:
        """The app stopped: it runs nothing more here; its log stays readable for a while."""
        app = self.apps.pop(app_id, None)
        if app is not None:
            self.stopped_logs[app_id] = app.logs
            while len(self.stopped_logs) > STOPPED_LOGS_KEPT:
                self.stopped_logs.popitem(last=False)

    def calls_of(self, pool: Pool) -> list[Call]:
        return [c for c in self.calls.values() if c.pool is pool]
