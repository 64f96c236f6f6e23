"""The container runtime: the first process inside every container (`python -m shoal.runtime`)."""
