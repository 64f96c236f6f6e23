"""A Modal program using App's attributes, a Cron schedule, Modal's container variables and `with_options`
(`shoal run compat_app.py`). Unchanged from Modal but for the import line."""

import os

import shoal as modal

image = modal.Image.debian_slim()
app = modal.App("compat-surface", image=image)

with app.image.imports():
    import json  # a package of the image, imported only where it exists


@app.function(schedule=modal.Cron("0 3 * * *"))  # a schedule: its containers import this module too
def nightly() -> str:
    return "nightly ran"


@app.function()
def modal_env() -> str:
    keys = ("MODAL_TASK_ID", "MODAL_IMAGE_ID", "MODAL_IS_REMOTE", "MODAL_ENVIRONMENT", "MODAL_REGION",
            "MODAL_CLOUD_PROVIDER")
    values = {k: os.environ.get(k) for k in keys}
    assert values["MODAL_TASK_ID"] == os.environ["SHOAL_CONTAINER_ID"]
    assert values["MODAL_IMAGE_ID"] == os.environ["SHOAL_IMAGE_ID"]
    return json.dumps({k: bool(v) for k, v in values.items()} | {"remote": values["MODAL_IS_REMOTE"]})


@app.function(secrets=[modal.Secret.from_dict({"GREETING": "hello"})], cpu=4096.0)  # more cores than there are
def greeting() -> str:
    return os.environ.get("GREETING", "-")


@app.local_entrypoint()
def main() -> None:
    print("name", app.name, "description", app.description, "interactive", app.is_interactive)
    print("app_id", (app.app_id or "").startswith("ap-"), "image", app.image is image)
    print("functions", sorted(app.registered_functions), "entrypoints", sorted(app.registered_entrypoints))
    print("classes", app.registered_classes, "web", app.registered_web_endpoints)
    print("nightly", nightly.remote())
    print("env", modal_env.remote())
    print("greeting", greeting.remote(), greeting.with_options(secrets=[
        modal.Secret.from_dict({"GREETING": "bonjour"})]).remote(), greeting.with_options(
        env={"GREETING": "hej"}).remote())
