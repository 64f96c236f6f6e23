"""Seed snippet: generator functions iterated with .remote_gen()."""

import shoal as modal

app = modal.App()


@app.function()
def count_to(n: int):
    for i in range(n):  # noqa: UP028 - verbatim from the seed
        yield i


with app.run():
    for num in count_to.remote_gen(10):
        print(num)
