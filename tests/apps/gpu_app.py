"""A Modal program asking for a GPU (`shoal run gpu_app.py`)."""

import os

import shoal as modal

app = modal.App("gpu-dev")


@app.function(gpu="T4")
def where() -> str:
    return f"ran, CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}"


@app.local_entrypoint()
def main() -> None:
    print(where.remote())
