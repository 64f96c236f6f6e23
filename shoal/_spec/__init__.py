"""What crosses process boundaries, and the rules both sides of a boundary apply.

The SDK, the control plane and the container runtime all import from here; nothing here imports them. Every
container imports `frames` on its cold-start path, so modules here import only the standard library and
msgspec at module level: heavier libraries (cloudpickle, tblib) are imported where they are used.

- `definitions` a function's definition (options, secrets, schedule, web, Server, class, image, and what the
             control plane adds) as msgspec Structs: built by the SDK, stored and run by the control plane,
             decoded by the runtime; bounds from `limits` are checked when it is decoded
- `requests` what each route of the control plane's API accepts (bodies, queries, path variables) as msgspec
             Structs: decoded at the edge (controlplane/rest.py), a 400 naming the field otherwise
- `frames`   the length-prefixed msgpack stream between the control plane and a container runtime, one Struct
             per frame type
- `errors`   exceptions as bytes (an exception raised in a container or by the control plane, re-raised by the
             caller with the remote frames); the classes themselves are `shoal.exception`'s, see there
- `config`   where state lives (SHOAL_HOME) and environment flags; how long results are kept
- `limits`   bounds stated once, checked by the decorators, `autoscaler.update` and the control plane (names,
             request bodies too)
- `images`   image ids: what is hashed, by which builder version; which steps exist
- `secrets`  what a secret key and value may be
- `params`   class parameters: binding `Cls(...)` arguments and their packed (msgpack) form
- `options`  what `with_options` may override
"""
