"""Which built images may go: a pure decision from what uses them and when (no I/O, no clock).

An image stays while an app that runs uses it, while it is busy (being built, asked for by an app registration,
run by a container), while it was used less than `grace` seconds ago, and while an image that stays is built on
it (a thin image of `copy=False` files uses its base's environment). Everything else may be removed.
Layer-store records that are not images (pulled bases, the builder's caches) stay while every layer they name is
a layer of an image that stays, else go once older than the grace period.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["ImageUse", "collectable", "idle_since", "refusal", "stale_records"]


@dataclass(frozen=True)
class ImageUse:
    """What is known of one built image."""

    image_id: str
    created: float  # when it was built (epoch seconds)
    last_used: float | None = None  # the last time an app or a container was seen using it
    apps: tuple[str, ...] = ()  # the running apps that use it now, as shown to users
    busy: str = ""  # why it must stay whatever its age ("it is being built", "container ta-… runs on it")
    parents: tuple[str, ...] = ()  # the images it is built on


def idle_since(image: ImageUse) -> float:
    return max(image.created, image.last_used or 0.0)


def collectable(images: Iterable[ImageUse], now: float, grace: float) -> list[str]:
    """The ids of the images that may be removed now, sorted."""
    by_id = {i.image_id: i for i in images}
    keep = {i.image_id for i in by_id.values() if i.apps or i.busy or now - idle_since(i) < grace}
    stack = list(keep)
    while stack:  # an image that stays keeps what it is built on
        for parent in by_id[stack.pop()].parents:
            if parent in by_id and parent not in keep:
                keep.add(parent)
                stack.append(parent)
    return sorted(set(by_id) - keep)


def refusal(image_id: str, images: Iterable[ImageUse]) -> str | None:
    """Why `image_id` may not be removed now (None: it may), for an explicit removal, which ignores its age."""
    images = list(images)
    image = next((i for i in images if i.image_id == image_id), None)
    if image is None:
        return None
    if image.apps:
        apps = f"app {image.apps[0]}" if len(image.apps) == 1 else f"apps {', '.join(image.apps)}"
        return f"image {image_id} is used by {apps}; stop {'it' if len(image.apps) == 1 else 'them'} first"
    if image.busy:
        return f"image {image_id} cannot be removed now: {image.busy}"
    dependents = sorted(i.image_id for i in images if image_id in i.parents)
    if dependents:
        return f"image {image_id} is the base of {', '.join(dependents)}; remove that first"
    return None


def stale_records(records: Iterable[tuple[str, frozenset[str], float]], kept_layers: frozenset[str], now: float,
                  grace: float) -> list[str]:
    """Of the (name, layer ids, recorded at) of layer-store records that are not images, the names to remove:
    those with a layer no kept image has, recorded at least `grace` seconds ago."""
    return sorted(name for name, layers, recorded in records
                  if not layers <= kept_layers and now - recorded >= grace)
