"""The control plane's image registry: the images of its layer store (`SHOAL_HOME/oci`) served read-only in the
shape of the OCI distribution API, so Ray nodes pull what they run with `skopeo` (shoal.oci.registry.pull) and no
path has to be shared between machines.

    GET /v2/                                   200: the API is here (401 with a Basic challenge without a credential)
    GET|HEAD /v2/<repo>/manifests/<reference>  a recorded image's manifest, by tag or by digest
    GET|HEAD /v2/<repo>/blobs/<digest>         a blob of a recorded image, streamed from its file
    GET /v2/<repo>/tags/list                   the repository's tags (`skopeo inspect` asks for them)

Who may pull: the node pull credential (credentials.pull_credential, derived from the admin token) and the admin;
a container's credential is refused (403, access.py), anything else is a 401. Registry clients send the credential
as the password of Basic auth, or as a Bearer token; both are taken. Errors are the registry API's JSON
(`{"errors": [{"code", "message"}]}`), which skopeo reports as they are.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import os
import re
from typing import TYPE_CHECKING

from aiohttp import web

from ..oci.store import MANIFEST_TYPES, Image, LayerStore, StoreError, check_digest
from .access import decide
from .credentials import is_pull_credential
from .rest import ApiError

if TYPE_CHECKING:
    from .gate import Gate

__all__ = ["ImageRegistry", "candidate_names", "credential_of", "tags_of"]

_REPO = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_HEADERS = {"Docker-Distribution-API-Version": "registry/2.0"}


def credential_of(header: str) -> str | None:
    """The credential of an `Authorization` header: a Bearer token, or the password of Basic auth (the user name
    is not looked at: skopeo sends whatever its auth file says)."""
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return None
        _, colon, password = decoded.partition(":")
        return password if colon and password else None
    return None


def candidate_names(repo: str, tag: str) -> list[str]:
    """The store record names a `repo:tag` may be, in order: the name as given (`shoal/im-…:latest`), without
    the `latest` tag, and the image id alone for `shoal/<image id>` (how built images are named varies)."""
    names = [f"{repo}:{tag}"]
    if tag == "latest":
        names.append(repo)
    if repo.startswith("shoal/") and "/" not in repo[6:]:
        names += [f"{repo[6:]}:{tag}"] + ([repo[6:]] if tag == "latest" else [])
    return names


def tags_of(names: list[str], repo: str) -> list[str]:
    """The tags of `repo` among store record names: the inverse of `candidate_names`."""
    bare = repo[6:] if repo.startswith("shoal/") and "/" not in repo[6:] else None
    found = set()
    for name in names:
        for prefix in (repo, bare):
            if prefix is None:
                continue
            if name == prefix:
                found.add("latest")
            elif name.startswith(prefix + ":") and _TAG.match(name[len(prefix) + 1:]):
                found.add(name[len(prefix) + 1:])
    return sorted(found)


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, content_type="application/json", headers={**_HEADERS, **(headers or {})},
                        text=json.dumps({"errors": [{"code": code, "message": message}]}))


class ImageRegistry:
    def __init__(self, store_root: str | os.PathLike[str], gate: Gate) -> None:
        self.store_root = store_root
        self._store: LayerStore | None = None
        self.gate = gate
        self._served: tuple[int, set[str]] = (-1, set())  # (mtime of images/, blob digests of the records)

    @property
    def store(self) -> LayerStore:
        if self._store is None:  # made on first use: a control plane that serves no OCI image needs no store
            self._store = LayerStore(self.store_root)
        return self._store

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v2/", self.base)
        router.add_get("/v2/{repo:.+}/manifests/{reference}", self.manifest)
        router.add_get("/v2/{repo:.+}/blobs/{digest}", self.blob)
        router.add_get("/v2/{repo:.+}/tags/list", self.tags)

    # -- auth ------------------------------------------------------------------------------------------------------
    def _refusal(self, request: web.Request) -> web.Response | None:
        """None when the request may pull (and names a valid repository, where it names one); else the 401, 403 or
        400 to answer."""
        refused = self._auth_refusal(request)
        repo = request.match_info.get("repo")
        if refused is None and repo is not None and not _REPO.match(repo):
            return _error(400, "NAME_INVALID", f"invalid repository name {repo!r}")
        return refused

    def _auth_refusal(self, request: web.Request) -> web.Response | None:
        challenge = {"WWW-Authenticate": 'Basic realm="shoal"'}
        credential = credential_of(request.headers.get("Authorization", ""))
        if credential is None:
            return _error(401, "UNAUTHORIZED", "the control plane's registry needs a credential: the node pull "
                          "credential (or the admin token)", challenge)
        if is_pull_credential(credential, self.gate.token):
            return None
        try:
            who = self.gate.identify_credential(credential)
        except ApiError as exc:
            return _error(401, "UNAUTHORIZED", str(exc), challenge)
        route = request.match_info.route.resource.canonical  # type: ignore[union-attr]  # (routed: not None)
        decision = decide(who, "GET", route)  # HEAD is GET's (add_get)
        if not decision.allowed:
            return _error(403, "DENIED", decision.reason)
        return None

    # -- routes ----------------------------------------------------------------------------------------------------
    async def base(self, request: web.Request) -> web.Response:
        return self._refusal(request) or web.json_response({}, headers=_HEADERS)

    async def manifest(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        repo, ref = request.match_info["repo"], request.match_info["reference"]
        image = await asyncio.to_thread(self._find, repo, ref)
        if image is None:
            return _error(404, "MANIFEST_UNKNOWN", f"no image {repo}:{ref} in the control plane's store"
                          if not ref.startswith("sha256:") else f"no image {repo}@{ref} in the control plane's store")
        try:
            data = await asyncio.to_thread(self.store.blob_path(image.manifest_digest).read_bytes)
        except FileNotFoundError:  # removed by a prune meanwhile
            return _error(404, "MANIFEST_UNKNOWN", f"the manifest of {repo}:{ref} is gone")
        media_type = json.loads(data).get("mediaType") or MANIFEST_TYPES[0]
        headers = {**_HEADERS, "Docker-Content-Digest": image.manifest_digest, "Content-Type": media_type}
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(len(data))})
        return web.Response(body=data, headers=headers)

    async def tags(self, request: web.Request) -> web.Response:
        if (refused := self._refusal(request)) is not None:
            return refused
        repo = request.match_info["repo"]
        names = [i.name for i in await asyncio.to_thread(self.store.list)]
        found = tags_of(names, repo)
        if not found:
            return _error(404, "NAME_UNKNOWN", f"no repository {repo} in the control plane's store")
        return web.json_response({"name": repo, "tags": found}, headers=_HEADERS)

    def _find(self, repo: str, ref: str) -> Image | None:
        if ref.startswith("sha256:"):  # by digest: any recorded image with that manifest (the repo is a label)
            try:
                check_digest(ref)
            except StoreError:
                return None
            return next((i for i in self.store.list() if i.manifest_digest == ref), None)
        if not _TAG.match(ref):
            return None
        for name in candidate_names(repo, ref):
            image = self.store.get(name)
            if image is not None:
                return image
        return None

    async def blob(self, request: web.Request) -> web.StreamResponse:
        if (refused := self._refusal(request)) is not None:
            return refused
        digest = request.match_info["digest"]
        try:
            path = self.store.blob_path(digest)
        except StoreError:
            return _error(400, "DIGEST_INVALID", f"not a sha256 digest: {digest!r}")
        if not await asyncio.to_thread(self._serves, digest) or not path.is_file():
            return _error(404, "BLOB_UNKNOWN", f"no blob {digest} in the control plane's store")
        return web.FileResponse(path, headers={**_HEADERS, "Docker-Content-Digest": digest,
                                               "Content-Type": "application/octet-stream"})

    def _serves(self, digest: str) -> bool:
        """Only the blobs of recorded images are served. Their set is read again when a record comes or goes (the
        directory's mtime), and on a miss (a record written within the mtime's granularity)."""
        mtime = self.store.images.stat().st_mtime_ns
        if mtime == self._served[0] and digest in self._served[1]:
            return True
        found: set[str] = set()
        for image in self.store.list():
            found |= image.blob_digests
        self._served = (mtime, found)
        return digest in found
