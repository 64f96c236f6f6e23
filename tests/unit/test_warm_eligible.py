"""Which pools warm containers serve: an OCI image whose USER is not root gets none (a warm runtime links its later
source into /root, which only root may)."""

from __future__ import annotations

import pytest

from shoal._spec.definitions import BuiltImage, FunctionDefinition
from shoal.controlplane.core.model import Pool
from shoal.controlplane.core.warmpool import eligible


@pytest.mark.parametrize(("user", "layers", "expected"), [
    (None, None, True),  # a venv image
    (None, ["/l"], True),  # an OCI image running as root
    ("root", ["/l"], True),
    ("0:0", ["/l"], True),
    ("app", ["/l"], False),
    ("1000:1000", ["/l"], False),
])
def test_warm_containers_only_for_images_run_as_root(user, layers, expected) -> None:
    built = BuiltImage(image_id="im-x", python="/usr/bin/python3", layers=layers, user=user)
    assert eligible(Pool("fu-x", "ap-x", FunctionDefinition(tag="f", image_built=built))) is expected
