"""Container backends: start a container for a function, report its exit, stop it. Nothing more."""
