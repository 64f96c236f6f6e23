"""The former name of the control plane's package, kept so that `python -m shoal.server` still starts it.

The control plane is `shoal.controlplane`; Modal's Server object (the SDK side) is `shoal.servers`.
"""
