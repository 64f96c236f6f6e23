"""How the SDK talks to the control plane: finding or starting it, transport, sync/async bridging."""
