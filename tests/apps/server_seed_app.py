"""Seed (Servers): the guide's example, a file server started in `@modal.enter()`, public (`unauthenticated=True`)."""

import shoal as modal

app = modal.App("server-seed")


@app.server(unauthenticated=True)
class Server:

    @modal.enter()
    def startup(self):
        import subprocess
        subprocess.Popen("python -m http.server -d / 8000", shell=True)
