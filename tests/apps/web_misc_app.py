"""Web endpoints beyond the seed's snippets: `docs=True`, and a web URL fetched from inside a container."""

import shoal as modal

app = modal.App("web-misc")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.fastapi_endpoint(docs=True)
def documented(name: str = "world") -> dict:
    """Greets someone."""
    return {"hello": name}


@app.function()
def fetch(url: str) -> tuple[int, bytes]:
    """GET a URL from inside a container."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.status, resp.read()
