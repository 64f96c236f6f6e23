"""Seed snippets: region selection (shoal records it and warns that it is not enforced)."""

import shoal as modal

app = modal.App()


@app.function(region="us-east-1")
def east_coast_only():
    pass


@app.function(region=["us-east-1", "eu-west-1"])
def multi_region():
    pass


print("east_coast_only region:", east_coast_only._options.region)
print("multi_region region:", multi_region._options.region)

with app.run():
    print("east_coast_only:", east_coast_only.remote())
    print("multi_region:", multi_region.remote())
