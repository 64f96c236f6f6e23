"""A class with @enter and web endpoints: one spawns a job, the other polls it by id (Modal's job-queue pattern).

    shoal run jobs_web_poll.py
"""

import json
import time
import urllib.parse
import urllib.request

import shoal as modal

image = modal.Image.debian_slim().pip_install("fastapi[standard]")
app = modal.App("program-jobs", image=image)


@app.function()
def slow_square(x: int) -> int:
    time.sleep(1)
    return x * x


@app.cls()
class Jobs:
    @modal.enter()
    def load(self):
        self.prefix = "job"  # set once per container, before any request

    @modal.fastapi_endpoint(method="POST")
    def submit(self, x: int):
        call = slow_square.spawn(x)
        return {"id": call.object_id, "prefix": self.prefix}

    @modal.fastapi_endpoint()
    def result(self, id: str):  # noqa: A002 - the query parameter's name
        call = modal.FunctionCall.from_id(id)
        try:
            return {"status": "done", "value": call.get(timeout=0)}
        except TimeoutError:
            return {"status": "pending"}


def fetch(url: str, method: str = "GET") -> dict:
    with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=60) as resp:
        return json.loads(resp.read())


@app.local_entrypoint()
def main():
    jobs = Jobs()
    submitted = fetch(jobs.submit.get_web_url() + "?x=7", method="POST")
    print("submitted", submitted["prefix"], submitted["id"].startswith("fc-"))
    statuses = []
    while True:
        got = fetch(jobs.result.get_web_url() + "?" + urllib.parse.urlencode({"id": submitted["id"]}))
        statuses.append(got["status"])
        if got["status"] == "done":
            break
        time.sleep(0.2)
    print("result", got["value"], "polled until done", statuses[-1] == "done")
