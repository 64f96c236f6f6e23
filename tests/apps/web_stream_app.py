"""Streaming through the ingress proxy: server-sent events that wait for the test between events, and a
large upload counted as it streams in."""

from fastapi import Request

import shoal as modal

app = modal.App("web-stream")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=10)
@modal.fastapi_endpoint()
def events(queue: str):
    """One event at once, then the next only when the test puts "go" on the queue (at most 60 s)."""
    from fastapi.responses import StreamingResponse

    q = modal.Queue.from_name(queue)

    def gen():
        yield "data: first\n\n"
        got = q.get(timeout=60)
        yield f"data: {'second' if got == 'go' else 'gave-up'}\n\n"
        yield "data: done\n\n"

    return StreamingResponse(gen(), media_type="text/event-stream")


@app.function(image=image)
@modal.fastapi_endpoint()
def download(mib: int):
    """`mib` MiB of a repeating pattern, streamed."""
    from fastapi.responses import StreamingResponse

    block = bytes(range(256)) * 4096

    def gen():
        for _ in range(mib):
            yield block

    return StreamingResponse(gen(), media_type="application/octet-stream")


@app.function(image=image, timeout=600)
@modal.fastapi_endpoint(method="POST")
async def upload(request: Request):
    n = 0
    chunks = 0
    async for chunk in request.stream():
        n += len(chunk)
        chunks += 1
    return {"bytes": n, "chunks": chunks}

