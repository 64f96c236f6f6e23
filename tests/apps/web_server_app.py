"""Seed (web endpoints): `@modal.web_server(8000)` exposing a file server the function starts."""

import shoal as modal

app = modal.App("web-server")


@app.function()
@modal.concurrent(max_inputs=1000)
@modal.web_server(8000)
def my_file_server():
    import subprocess
    subprocess.Popen("python -m http.server -d / 8000", shell=True)
