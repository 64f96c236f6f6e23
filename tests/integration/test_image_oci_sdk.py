"""The SDK side of OCI images against a real control plane: a Dockerfile's build context is uploaded as a blob
when the app starts (as add_local_* files), once, and is the deterministic tarball its id names."""

from __future__ import annotations

import io
import tarfile

from shoal._client.transport import get_client
from shoal.image import Image, wire_for


def test_the_build_context_is_uploaded_when_the_app_starts(control_plane, tmp_path, monkeypatch):
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "main.py").write_text("print('hi')\n")
    (tmp_path / "Dockerfile").write_text("FROM python:3.12-slim\nCOPY app /srv/app\n")
    monkeypatch.chdir(tmp_path)
    image = Image.from_dockerfile("Dockerfile").dockerfile_commands("COPY extra /etc/extra",
                                                                     context_files={"extra": __file__})
    uploaded: set[str] = set()
    spec = wire_for(image, get_client(), uploaded)
    shas = [spec.steps[0]["context_sha"], spec.steps[1]["context_sha"]]
    assert uploaded == set(shas)
    for sha in shas:
        blob = (control_plane.home / "blobs" / sha).read_bytes()
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            names = tar.getnames()
        assert names == (["app/main.py"] if sha == shas[0] else ["extra"])
    # a second start sends nothing: the control plane has them
    again: set[str] = set()
    before = {p.name: p.stat().st_mtime_ns for p in (control_plane.home / "blobs").iterdir()}
    assert wire_for(image, get_client(), again) == spec
    assert {p.name: p.stat().st_mtime_ns for p in (control_plane.home / "blobs").iterdir()} == before
