"""Seed (web endpoints): a parametrized class serving files; each `?root=` value is its own container pool."""

import shoal as modal

app = modal.App("web-cls")


@app.cls()
@modal.concurrent(max_inputs=1000)
class Server:
    root: str = modal.parameter(default=".")

    @modal.web_server(8000)
    def files(self):
        import subprocess
        subprocess.Popen(f"python -m http.server -d {self.root} 8000", shell=True)
