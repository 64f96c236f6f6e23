"""Function definitions as they arrive, and preparing them before they run: decoded into the wire contract's
Structs (`shoal/_spec/definitions.py`) at the edge, named secrets and volumes checked, sources unpacked from
their uploaded blobs, images built (or found in the cache). Used by app registration (api.py) and by deploys
and rollbacks (deploy.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import os
import tarfile
import time
from pathlib import Path

from .._spec import definitions as spec
from .._spec.definitions import BuiltImage, FunctionDefinition, ImageSpec
from ..exception import ImageBuildError, InvalidError
from .core.model import AppState
from .images import ImageBuilder
from .rest import ApiError
from .scheduler import next_fire
from .secrets import SecretStore
from .volumes import Volumes


def check_client_fields(defs: list[FunctionDefinition]) -> list[FunctionDefinition]:
    """Definitions a client sent (decoded and checked at the edge: `_spec/requests.py`) set none of the fields
    the control plane adds, and their schedules can run; a 400 naming the field otherwise."""
    blank = FunctionDefinition(tag="")
    now = time.time()
    for i, d in enumerate(defs):
        for name in spec.CONTROL_PLANE_FIELDS:
            if getattr(d, name) != getattr(blank, name):
                raise ApiError(400, f"invalid function definition: `functions[{i}].{name}` is set by the control "
                                    "plane, not by clients")
        if d.schedule is not None:
            try:
                next_fire(d.schedule, now, now)
            except Exception as exc:  # noqa: BLE001 - croniter, zoneinfo and relativedelta raise their own
                raise ApiError(400, f"invalid function definition: `functions[{i}].schedule`: {exc}") from exc
    return defs


class Definitions:
    def __init__(self, state_dir: Path, images: ImageBuilder, secrets: SecretStore, volumes: Volumes) -> None:
        self.images = images
        self.secrets = secrets
        self.volumes = volumes
        self.blob_dir = state_dir / "blobs"
        self.source_dir = state_dir / "sources"
        # What app registrations are doing with images, for the image clean-up (image_gc.py, which also forgets
        # old entries): the ids being built or looked up now (with how many registrations), and when one was
        # last asked for.
        self.preparing: dict[str, int] = {}
        self.requested_at: dict[str, float] = {}

    def blob_path(self, sha: str) -> Path:
        """Where an uploaded source blob lives (its name is its sha256)."""
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            raise ApiError(400, "blob id must be a lowercase sha256 hex digest")
        return self.blob_dir / sha

    def materialise(self, sha: str) -> str:
        """Unpack a source tarball once per machine; containers run with it as working directory."""
        blob = self.blob_path(sha)  # checks the id first: the path is derived from it
        target = self.source_dir / sha
        if not target.exists():
            if not blob.exists():
                raise ApiError(400, f"source blob {sha} was not uploaded")
            tmp = self.source_dir / f".{sha}.{os.getpid()}.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            with tarfile.open(fileobj=io.BytesIO(blob.read_bytes())) as tar:
                tar.extractall(tmp, filter="data")
            try:
                tmp.rename(target)
            except OSError:
                pass  # another request got there first
        return str(target)

    async def prepare(self, app: AppState, defs: list[FunctionDefinition]) -> None:
        """Check named secrets, unpack sources, build images: what a definition needs before it runs."""
        for d in defs:
            await self.secrets.check(d.secrets)
            await self.volumes.check(d)
            if d.source_id:
                d.source_dir = self.materialise(d.source_id)
            elif d.serialized_fn is None:
                raise ApiError(400, f"function {d.tag!r} has neither source_id nor serialized_fn")
        await self._build_images(app, defs)

    async def prepare_again(self, defs: list[FunctionDefinition], version: int) -> None:
        """Definitions of an earlier version, deployed again (a rollback): their secrets must still exist,
        their sources are unpacked again, their images must still be built here."""
        for d in defs:
            await self.secrets.check(d.secrets)
            if d.source_id:
                d.source_dir = self.materialise(d.source_id)
            image_id = d.image.image_id if d.image is not None else None
            if d.image_built is not None and image_id and self.images.cached(image_id) is None:
                raise ApiError(409, f"the image of {d.tag!r} in version {version} is no longer built here; "
                                    "deploy that version from its source instead", "InvalidError")

    async def _build_images(self, app: AppState, defs: list[FunctionDefinition]) -> None:
        """Build (or find in the cache) each distinct image of these functions, at once; the output streams to
        the app's log, marked with the image id. The open request keeps the app alive while it builds."""
        specs: dict[str, ImageSpec] = {d.image.image_id: d.image for d in defs if d.image is not None}
        for iid, wire in list(specs.items()):
            specs[iid] = await self.secrets.resolve_image(wire)
        app.session_started()
        for iid in specs:
            self.preparing[iid] = self.preparing.get(iid, 0) + 1
            self.requested_at[iid] = time.time()
        try:
            results = await asyncio.gather(*(
                self.images.ensure(spec, log=lambda text, iid=str(iid): app.logs.append(iid, "stderr", text))
                for iid, spec in specs.items()), return_exceptions=True)
        finally:
            app.session_ended()
            for iid in specs:
                self.requested_at[iid] = time.time()
                if self.preparing[iid] <= 1:
                    del self.preparing[iid]
                else:
                    self.preparing[iid] -= 1
        for result in results:
            if isinstance(result, ImageBuildError):
                raise ApiError(400, str(result), "ImageBuildError")
            if isinstance(result, InvalidError):
                raise ApiError(400, str(result))
            if isinstance(result, BaseException):
                raise result
        built = dict(zip(specs, results, strict=True))
        for d in defs:
            if d.image is not None:
                d.image_built = BuiltImage(**dataclasses.asdict(built[d.image.image_id]))
                d.image = ImageSpec(image_id=d.image.image_id)  # build inputs (and secrets) stay out of containers
