"""`python -m shoal.cli`."""

from . import main

main()
