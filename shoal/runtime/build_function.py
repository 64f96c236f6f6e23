"""Runs an image's `run_function` step in its build container: `python -m shoal.runtime.build_function PAYLOAD
TIMEOUT`. The payload is the pickled (function, args, kwargs) (shoal/_image_function.py); what the function writes
becomes the image's next layer. Its return value is dropped, as in Modal; an exception or the timeout fails the
step, with the traceback in the build's output."""

from __future__ import annotations

import signal
import sys


def main(payload: str, timeout: int) -> None:
    import os

    import cloudpickle

    os.environ["SHOAL_IMAGE_BUILD"] = "1"  # shoal.is_local() is False here, as in Modal (_container_context.BUILD_ENV)

    with open(payload, "rb") as f:
        fn, args, kwargs = cloudpickle.load(f)

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"run_function {getattr(fn, '__qualname__', fn)} timed out after {timeout}s")

    signal.signal(signal.SIGALRM, expire)
    signal.alarm(timeout)
    fn(*args, **kwargs)
    signal.alarm(0)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
