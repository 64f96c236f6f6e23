"""Seed snippets: CPU and memory requests and limits (near-verbatim); calling must work."""

import os

import shoal as modal

app = modal.App()


@app.function(
    cpu=2.0,              # 2 CPU cores
    memory=8192           # 8 GB in MiB
)
def cpu_intensive():
    pass


@app.function(
    cpu=(2.0, 4.0),       # Request 2, limit to 4
    memory=(4096, 8192)   # Request 4 GB, limit to 8 GB
)
def bounded_resources():
    pass


@app.function(cpu=2.0, memory=8192)
def where_am_i():
    return os.getpid()


with app.run():
    print("cpu_intensive:", cpu_intensive.remote())
    print("bounded_resources:", bounded_resources.remote())
    print("remote pid differs:", where_am_i.remote() != os.getpid())
