"""WebSockets through the ingress proxy: an echo route on a FastAPI app."""

import shoal as modal

app = modal.App("web-ws")

image = modal.Image.debian_slim().pip_install("fastapi[standard]")


@app.function(image=image)
@modal.concurrent(max_inputs=100)
@modal.asgi_app()
def ws_app():
    from fastapi import FastAPI, WebSocket, WebSocketDisconnect

    web_app = FastAPI()

    @web_app.websocket("/ws")
    async def echo(websocket: WebSocket):
        await websocket.accept()
        try:
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                if message.get("text") is not None:
                    await websocket.send_text("echo: " + message["text"])
                elif message.get("bytes") is not None:
                    await websocket.send_bytes(message["bytes"])
        except WebSocketDisconnect:
            return

    return web_app
