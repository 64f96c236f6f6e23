"""Two apps claiming one web label (tests/integration/test_security_credentials.py): the label stays with the app
that holds it."""

import shoal as modal

holder = modal.App("label-holder")
taker = modal.App("label-taker")
LABEL = "security-shared-label"


def _serve(text: str) -> None:
    import subprocess
    import tempfile

    root = tempfile.mkdtemp()
    with open(f"{root}/index.html", "w") as f:
        f.write(text)
    subprocess.Popen(["python", "-m", "http.server", "-d", root, "8000"])


@holder.function()
@modal.web_server(8000, label=LABEL)
def held() -> None:
    _serve("holder")


@taker.function()
@modal.web_server(8000, label=LABEL)
def taken() -> None:
    _serve("taker")
