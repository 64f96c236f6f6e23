"""Seed snippet: async functions called with `await f.remote.aio(...)` inside `async with app.run()`."""

import asyncio

import shoal as modal

app = modal.App()


@app.function()
async def async_hello(name: str):
    await asyncio.sleep(1)
    return f"Hello, {name}!"


async def main():
    async with app.run():
        result = await async_hello.remote.aio("World")
        print(result)


asyncio.run(main())
