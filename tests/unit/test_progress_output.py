"""The live status an app shows while it starts or deploys (shoal/_output.py): what it makes of the build log's
lines, and the lines printed above it, kept as written."""

from __future__ import annotations

import io
import re
import sys

from rich.console import Console
from rich.live import Live

from shoal._output import LiveStartProgress, print_above


def drawn(progress: LiveStartProgress) -> str:
    console = Console(file=io.StringIO(), width=200, record=True)
    console.print(progress._render())
    return console.export_text()


def test_lines_printed_during_a_live_display_keep_their_brackets():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=120)
    before = sys.stderr
    with Live(console=console, redirect_stdout=False, redirect_stderr=False, transient=True):
        restore = print_above(console)
        assert sys.stderr is not before
        try:
            print("[im-abc123] => Step 1: pip_install('six') [bold]x[/bold]", file=sys.stderr)
            print("unfinished", end="", file=sys.stderr)  # a part line waits for its end
            print(" line", file=sys.stderr)
        finally:
            restore()
    plain = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.getvalue())
    assert "[im-abc123] => Step 1: pip_install('six') [bold]x[/bold]\n" in plain  # not read as markup
    assert "unfinished line\n" in plain
    assert sys.stderr is before  # given back


def test_the_status_follows_each_build_by_its_log_marks(monkeypatch):
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    progress = LiveStartProgress("Creating objects")
    try:
        progress.build_line("im-aaa", "Building image im-aaa (steps 0 to 2)\n")
        progress.build_line("im-bbb", "Building image im-bbb (steps 0 to 1)\n")
        progress.build_line("im-aaa", "=> Step 1: pip_install('six')\n")
        progress.build_line("im-aaa", "Resolved 1 package in 1ms\n")  # the step's own output: no change
        progress.build_line("im-ccc", "=> Step 1: of a build not seen starting\n")
        text = drawn(progress)
        assert "Creating objects..." in text
        assert "Building image im-aaa: step 1/2: pip_install('six')" in text
        assert "Building image im-bbb" in text and "im-ccc" not in text

        progress.build_line("im-aaa", "=> Step 2: env({'A': '[b]'})\n")
        progress.phase("Registering")
        text = drawn(progress)
        assert "Building image im-aaa: step 2/2: env({'A': '[b]'})" in text  # escaped, not markup
        assert "Registering..." in text

        progress.build_line("im-aaa", "Built image im-aaa in 1.00s\n")
        assert "im-aaa" not in drawn(progress) and "im-bbb" in drawn(progress)
    finally:
        progress.close()
