"""A local module that images_app.py adds to an image with `add_local_python_source`."""

VALUE = "helper-42"
