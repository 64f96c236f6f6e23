"""The control plane (`shoal up`). The SDK and the container runtime never import this package."""
