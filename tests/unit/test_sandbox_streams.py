"""A sandbox stream's bound (core/sandbox_streams.OutputFile): what passes it is dropped with one note saying so,
however the output was cut into chunks."""

from __future__ import annotations

from pathlib import Path

from shoal.controlplane.core.sandbox_streams import OutputFile

NOTE = b"\n[shoal: output past 1024 bytes dropped]\n"


def test_a_chunk_that_fills_the_bound_exactly_then_more_gets_the_note(tmp_path: Path) -> None:
    f = OutputFile(tmp_path / "out", limit=1024)
    f.append(b"a" * 512)
    f.append(b"b" * 512)  # exactly at the bound: nothing dropped yet
    assert (tmp_path / "out").read_bytes() == b"a" * 512 + b"b" * 512
    f.append(b"c" * 10)
    f.append(b"d" * 10)
    f.close()
    assert (tmp_path / "out").read_bytes() == b"a" * 512 + b"b" * 512 + NOTE


def test_a_chunk_across_the_bound_is_cut_and_noted_once(tmp_path: Path) -> None:
    f = OutputFile(tmp_path / "out", limit=1024)
    f.append(b"a" * 1000)
    f.append(b"b" * 100)
    f.append(b"c" * 100)
    f.close()
    assert (tmp_path / "out").read_bytes() == b"a" * 1000 + b"b" * 24 + NOTE
    again = OutputFile(tmp_path / "out", limit=1024)  # reopened (a restart): no second note
    again.append(b"d")
    again.close()
    assert (tmp_path / "out").read_bytes() == b"a" * 1000 + b"b" * 24 + NOTE
