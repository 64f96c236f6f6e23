"""Apps whose images cannot be built: a package that does not exist, a Python that is not installed."""

from __future__ import annotations

import sys

import shoal as modal

bad_package = modal.App("images-bad-package")
missing_python = modal.App("images-missing-python")


@bad_package.function(image=modal.Image.debian_slim().pip_install("shoal-nonexistent-pkg-xyz"))
def never_runs() -> None:
    pass


@missing_python.function(image=modal.Image.debian_slim(python_version="3.14"))
def never_runs_either() -> None:
    pass


if __name__ == "__main__":  # run as a script: the build output streams to this process's terminal
    try:
        with bad_package.run():
            pass
    except modal.exception.ImageBuildError as exc:
        print(f"RAISED ImageBuildError: {exc}", flush=True)
        sys.exit(3)
