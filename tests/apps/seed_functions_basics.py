"""Seed snippets: creating functions, .remote(), .local(), .map() and .spawn() (near-verbatim)."""

import shoal as modal

app = modal.App()


@app.function()
def hello(name: str):
    return f"Hello, {name}!"


with app.run():
    result = hello.remote("World")
    print(result)  # "Hello, World!"

result = hello.local("World")
print(result)  # "Hello, World!"

names = ["Alice", "Bob", "Charlie"]
with app.run():
    results = list(hello.map(names))
    print(results)  # ["Hello, Alice!", "Hello, Bob!", "Hello, Charlie!"]

with app.run():
    call = hello.spawn("World")
    # Do other work...
    result = call.get()  # Wait for result when needed
    print("spawned:", result)
