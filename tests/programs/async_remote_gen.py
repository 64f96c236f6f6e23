"""An async local entrypoint streaming generators with .remote_gen.aio and awaiting calls concurrently.

    shoal run async_remote_gen.py
"""

import asyncio

import shoal as modal

app = modal.App("program-async-gen")


@app.function()
async def countdown(n: int):
    for i in range(n, 0, -1):
        await asyncio.sleep(0.01)
        yield i


@app.function()
def words(text: str):
    yield from text.split()


@app.function()
async def shout(word: str) -> str:
    return word.upper()


@app.local_entrypoint()
async def main():
    print("countdown", [i async for i in countdown.remote_gen.aio(5)])
    shouted = await asyncio.gather(*[shout.remote.aio(w) async for w in words.remote_gen.aio("to be or not")])
    print("shouted", list(shouted))
    first, second = await asyncio.gather(countdown.remote_gen.aio(2).__anext__(), shout.remote.aio("x"))
    print("concurrently", first, second)
