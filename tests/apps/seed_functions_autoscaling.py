"""Seed snippet: autoscaling options (near-verbatim), plus the "keep functions focused" snippets."""

import shoal as modal

app = modal.App()


@app.function(
    min_containers=2,      # Always keep 2 running
    max_containers=10,     # Never exceed 10
    buffer_containers=1,   # Keep 1 extra idle container
    scaledown_window=300   # Wait 5 minutes before scaling down
)
def auto_scaled():
    pass


# Good: Focused functions
@app.function()
def extract_data():
    pass


@app.function()
def transform_data():
    pass


# Avoid: Monolithic function doing everything
@app.function()
def do_everything():
    pass


with app.run():
    print("auto_scaled:", auto_scaled.remote())
    print("extract_data:", extract_data.remote())
    print("transform_data:", transform_data.remote())
    print("do_everything:", do_everything.remote())
