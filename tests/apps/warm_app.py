"""Single-use functions, so every call needs a new container: the warm pool's job."""

import os
import sys

import shoal as modal

app = modal.App("warm")

import xml.dom.minidom  # noqa: E402,F401 - an import the warm pool learns and does ahead


@app.function(single_use_containers=True, secrets=[modal.Secret.from_dict({"WARM_SECRET": "s3"})])
def probe() -> dict:
    here = os.path.dirname(os.path.abspath(__file__))
    return {"container": os.environ.get("SHOAL_CONTAINER_ID"), "secret": os.environ.get("WARM_SECRET"),
            "cwd": os.getcwd(), "source_dir": here, "minidom": "xml.dom.minidom" in sys.modules}
