"""Two apps on two images, for the image clean-up tests: one keeps running, the other stops."""

from __future__ import annotations

import os

import shoal as modal

kept_image = modal.Image.debian_slim().env({"IMAGE_GC_TEST": "kept"})
gone_image = modal.Image.debian_slim().env({"IMAGE_GC_TEST": "gone"})

kept_app = modal.App("image-gc-kept")
gone_app = modal.App("image-gc-gone")


@kept_app.function(image=kept_image)
def kept() -> str:
    return os.environ["IMAGE_GC_TEST"]


@gone_app.function(image=gone_image)
def gone() -> str:
    return os.environ["IMAGE_GC_TEST"]
