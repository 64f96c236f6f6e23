"""`Image.run_function` in the SDK: Modal's checks at declaration time, what the image id depends on, and a payload
that runs where the function's module cannot be imported (it travels by value)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap

import pytest

import shoal
from shoal.exception import InvalidError
from shoal.image import Image


def download(n: int = 1) -> int:
    return n * 2


def other() -> int:
    return 0


def step_of(image: Image) -> dict:
    return image.to_wire().steps[-1]


def test_wrong_arguments_fail_at_declaration_naming_the_parameter():
    app = shoal.App("run-function-checks")
    decorated = app.function(serialized=True)(other)
    base = Image.debian_slim()
    for call, name in [(lambda: base.run_function(decorated), "raw_f"), (lambda: base.run_function(len), "raw_f"),
                       (lambda: base.run_function(download, args=5), "args"),
                       (lambda: base.run_function(download, kwargs={1: 2}), "kwargs"),
                       (lambda: base.run_function(download, timeout=0), "timeout"),
                       (lambda: base.run_function(download, timeout=True), "timeout"),
                       (lambda: base.run_function(download, volumes={"/v": object()}), "volumes"),
                       (lambda: base.run_function(download, env={"A": 1}), "environment")]:
        with pytest.raises(InvalidError, match=name):
            call()


def test_the_id_follows_the_source_and_the_arguments():
    base = Image.debian_slim()
    one = base.run_function(download, args=(1,), kwargs={"a": 1, "b": 2})
    assert one.object_id == base.run_function(download, args=(1,), kwargs={"b": 2, "a": 1}).object_id
    assert one.object_id != base.run_function(download, args=(2,), kwargs={"a": 1, "b": 2}).object_id
    assert one.object_id != base.run_function(other).object_id
    step = step_of(one)
    assert step["function"] == f"{__name__}.download" and step["timeout"] == 3600
    assert step["repr"] == f"run_function('{__name__}.download')"
    assert {"payload_sha", "source_sha", "args_sha"} <= set(step)


def test_the_payload_runs_where_the_functions_module_is_not_importable(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "fetcher.py").write_text(textwrap.dedent('''
        SIZE = 3

        def _name():
            return "weights"

        def fetch(path, times):
            with open(path, "w") as f:
                f.write(_name() * times * SIZE)
    '''))
    spec = importlib.util.spec_from_file_location("fetcher", src / "fetcher.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["fetcher"] = module
    try:
        spec.loader.exec_module(module)
        out = tmp_path / "out.txt"
        image = Image.debian_slim().run_function(module.fetch, args=(str(out), 2))
        wire, blobs = image._resolve()
    finally:
        del sys.modules["fetcher"]
    sha = wire.steps[-1]["payload_sha"]
    (tmp_path / "payload").write_bytes(blobs[sha]())
    proc = subprocess.run([sys.executable, "-m", "shoal.runtime.build_function", str(tmp_path / "payload"), "30"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert out.read_text() == "weights" * 6


def test_installed_and_standard_library_functions_travel_by_reference():
    import json

    import cloudpickle

    for fn in (json.dumps, cloudpickle.dumps):
        wire, blobs = Image.debian_slim().run_function(fn, args=({},))._resolve()
        loaded, args, _ = cloudpickle.loads(blobs[wire.steps[-1]["payload_sha"]]())
        assert loaded is fn and args == ({},)  # the image's own copy is called
