"""An app whose definitions a test stores as an older control plane wrote them (test_stored_definitions.py)."""

import os

import shoal as modal

app = modal.App("legacy-definitions")


@app.function(timeout=60, retries=1, secrets=[modal.Secret.from_dict({"GREETING": "hello"})])
def greet(name: str) -> str:
    return f"{os.environ['GREETING']} {name}"


@app.cls()
class Counter:
    start: int = modal.parameter(default=1)

    @modal.method()
    def add(self, x: int) -> int:
        return self.start + x
