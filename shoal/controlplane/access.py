"""Who may do what on the control plane's API: a pure decision per route (no I/O, no clock).

A request comes from the admin (the API token: the CLI, the SDK outside containers, operators) or from a
container (its own credential, valid while it lives: controlplane/credentials.py). The admin may do everything.
A container may do what Modal lets code in a container do — call, spawn and look up functions and classes, read
call results, use Dicts, Queues and Volumes, create ephemeral apps and run functions in them — and nothing it
creates may hold a secret it does not hold itself. Everything else is refused with a message that says what.
`ROUTES` is the table (docs/security.md shows it); a route not in it is refused to containers.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

__all__ = ["ADMIN", "BODY_ROUTES", "ROUTES", "Decision", "Entry", "Facts", "Identity", "Rule", "decide"]


@dataclass(frozen=True)
class Identity:
    """Who sent a request. `container_id` None: the admin token."""

    container_id: str | None = None
    app_id: str = ""  # the app the container runs for ("" for a warm container not yet assigned)
    function: str = ""  # its function's tag
    secrets: frozenset[str] = frozenset()  # the named secrets attached to its function
    created: frozenset[str] = frozenset()  # ephemeral apps that containers of its app created (and still run)

    @property
    def is_admin(self) -> bool:
        return self.container_id is None


ADMIN = Identity()


@dataclass(frozen=True)
class Facts:
    """What a decision needs to know of the request beyond its route, gathered by the API's middleware."""

    app_id: str | None = None  # the app the route acts on (named in the path, or the app of the function named)
    mode: str | None = None  # `POST /v1/apps`: the mode asked for
    name_taken: bool = False  # `POST /v1/apps`: a running app of another owner has the name asked for
    create_if_missing: bool = False  # `POST /v1/apps/lookup`
    secrets: frozenset[str] = frozenset()  # named secrets the request would attach (definitions, with_options)
    builds_image: bool = False  # a definition's image has build steps not yet built on this machine


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str = ""


class Rule(Enum):
    ANY = "any app"  # allowed, whichever app the route acts on
    OWN = "its own app and the ephemeral apps its app created"
    CREATED = "the ephemeral apps its app created"
    CREATE_APP = "ephemeral apps only"
    LOOKUP_APP = "without create_if_missing"
    DENY = "never"


@dataclass(frozen=True)
class Entry:
    rule: Rule
    denied: str = ""  # what "containers may not …" says when refused
    attaches_secrets: bool = False  # the body may name secrets: they must be held


def _any(secrets: bool = False) -> Entry:
    return Entry(Rule.ANY, attaches_secrets=secrets)


def _deny(what: str) -> Entry:
    return Entry(Rule.DENY, what)


# (method, route as registered) -> what a container may do there.
ROUTES: dict[tuple[str, str], Entry] = {
    ("POST", "/v1/shutdown"): _deny("shut down the control plane"),
    ("GET", "/metrics"): _deny("read the control plane's metrics"),
    ("POST", "/v1/dashboard/login"): _deny("open the dashboard"),
    ("HEAD", "/v1/blobs/{sha}"): _any(),  # uploading the source of an ephemeral app it runs
    ("PUT", "/v1/blobs/{sha}"): _any(),
    ("GET", "/v1/apps"): _deny("list apps"),
    ("POST", "/v1/apps"): Entry(Rule.CREATE_APP, "create deployed apps (only ephemeral ones)"),
    ("POST", "/v1/apps/{app_id}/functions"): Entry(
        Rule.CREATED, "register functions in apps they did not create", attaches_secrets=True),
    ("POST", "/v1/apps/{app_id}/stop"): Entry(Rule.OWN, "stop other apps"),
    ("GET", "/v1/apps/{app_id}/logs"): Entry(Rule.OWN, "read other apps' logs"),
    ("POST", "/v1/apps/deploy"): _deny("deploy apps"),
    ("POST", "/v1/apps/lookup"): Entry(Rule.LOOKUP_APP, "create deployed apps"),
    ("GET", "/v1/apps/{app_ref}/info"): _deny("read apps' deployment records"),
    ("GET", "/v1/apps/{app_ref}/history"): _deny("read apps' deployment history"),
    ("POST", "/v1/apps/{app_ref}/rollback"): _deny("roll back apps"),
    ("POST", "/v1/functions/{function_id}/calls"): _any(),
    ("POST", "/v1/functions/{function_id}/variants"): _any(secrets=True),  # class parameters, with_options
    ("GET", "/v1/functions/lookup"): _any(),
    ("GET", "/v1/functions/{function_id}/stats"): _any(),
    ("GET", "/v1/functions/{function_id}/web_url"): _any(),
    ("GET", "/v1/functions/{function_id}/requests"): _deny("read the ingress proxy's request log"),
    ("GET", "/v1/functions/{function_id}/autoscaler"): Entry(Rule.OWN, "read other apps' autoscaler settings"),
    ("POST", "/v1/functions/{function_id}/autoscaler"): Entry(Rule.OWN, "change other apps' autoscaler settings"),
    ("POST", "/v1/functions/{function_id}/shell"): _deny("start shells"),
    ("POST", "/v1/calls/{call_id}/inputs"): _any(),
    ("GET", "/v1/calls/{call_id}/outputs"): _any(),
    ("GET", "/v1/calls/{call_id}/result"): _any(),
    ("GET", "/v1/calls/{call_id}"): _any(),
    ("POST", "/v1/calls/{call_id}/cancel"): _any(),
    ("GET", "/v1/calls/{call_id}/graph"): _any(),
    # A session's token reaches one container of a Server: no more than calling the Server's app does.
    ("POST", "/v1/functions/{function_id}/sessions"): _any(),
    ("POST", "/v1/functions/{function_id}/sessions/terminate"): _any(),
    ("GET", "/v1/containers"): _deny("list containers"),
    ("GET", "/v1/containers/{container_id}"): _deny("inspect containers"),
    ("GET", "/v1/containers/{container_id}/logs"): _deny("read containers' logs"),
    ("POST", "/v1/containers/{container_id}/stop"): _deny("stop containers"),
    # Dicts, Queues and Volumes by name are the installation's (as in a Modal workspace), not one app's.
    ("POST", "/v1/objects"): _any(),
    ("GET", "/v1/objects"): _deny("list stored objects"),
    ("DELETE", "/v1/objects/{object_id}"): _any(),
    **{("POST", f"/v1/dicts/{{object_id}}/{op}"): _any()
       for op in ("get", "put", "pop", "contains", "update", "clear", "len", "items")},
    **{("POST", f"/v1/queues/{{object_id}}/{op}"): _any() for op in ("put", "get", "len", "clear", "peek")},
    ("POST", "/v1/volumes/rename"): _deny("rename Volumes"),
    **{("GET", f"/v1/volumes/{{volume_id}}/{op}"): _any() for op in ("entries", "file")},
    **{("POST", f"/v1/volumes/{{volume_id}}/{op}"): _any()
       for op in ("remove", "copy", "uploads", "uploads/{upload_id}/commit", "commit", "reload")},
    ("PUT", "/v1/volumes/{volume_id}/uploads/{upload_id}/{index}"): _any(),
    ("GET", "/v1/secrets"): _deny("list secrets"),
    ("POST", "/v1/secrets"): _deny("create or change secrets"),
    ("POST", "/v1/secrets/{name}/update"): _deny("create or change secrets"),
    ("DELETE", "/v1/secrets/{name}"): _deny("delete secrets"),
    ("POST", "/v1/proxy-tokens"): _deny("create proxy auth tokens"),
    ("GET", "/v1/proxy-tokens"): _deny("list proxy auth tokens"),
    ("DELETE", "/v1/proxy-tokens/{token_id}"): _deny("delete proxy auth tokens"),
    ("POST", "/v1/proxy-tokens/{token_id}/allow"): _deny("change proxy auth tokens"),
    ("POST", "/v1/proxy-tokens/{token_id}/revoke"): _deny("change proxy auth tokens"),
    # Sandboxes (controlplane/sandboxes.py): a function's container may create and manage those of its own app
    # (and of the ephemeral apps its app created); a sandbox's own container holds no credential at all.
    ("POST", "/v1/sandboxes"): Entry(Rule.OWN, "create sandboxes in other apps", attaches_secrets=True),
    ("GET", "/v1/sandboxes"): Entry(Rule.OWN, "list other apps' sandboxes (pass `app_id`)"),
    ("GET", "/v1/sandboxes/by-name"): Entry(Rule.OWN, "look up other apps' sandboxes"),
    **{(m, f"/v1/sandboxes/{{sandbox_id}}{p}"): Entry(Rule.OWN, "use other apps' sandboxes")
       for m, p in (("GET", ""), ("GET", "/wait"), ("POST", "/terminate"), ("PUT", "/tags"), ("GET", "/output"),
                    ("POST", "/stdin"), ("GET", "/tunnels"), ("POST", "/fs/{op}"),
                    ("POST", "/snapshot"), ("POST", "/reload-volumes"))},
    ("POST", "/v1/sandboxes/{sandbox_id}/exec"): Entry(Rule.OWN, "use other apps' sandboxes", attaches_secrets=True),
    **{(m, f"/v1/execs/{{exec_id}}/{p}"): Entry(Rule.OWN, "use other apps' sandboxes")
       for m, p in (("GET", "output"), ("POST", "stdin"), ("GET", "wait"))},
    # The image registry Ray nodes pull from (oci_serve.py): the node pull credential's, not containers'.
    **{("GET", route): _deny("pull images from the control plane's registry (it serves Ray nodes)")
       for route in ("/v2/", "/v2/{repo}/manifests/{reference}", "/v2/{repo}/blobs/{digest}",
                     "/v2/{repo}/tags/list")},
    ("GET", "/v1/images"): _deny("list images"),
    ("DELETE", "/v1/images/{image_id}"): _deny("remove images"),
    ("POST", "/v1/images/prune"): _deny("remove images"),
}

# Routes whose decision needs the request's body (the middleware reads it only for these).
BODY_ROUTES = frozenset({("POST", "/v1/apps"), ("POST", "/v1/apps/lookup"),
                         ("POST", "/v1/apps/{app_id}/functions"), ("POST", "/v1/functions/{function_id}/variants")})


def _no(what: str) -> Decision:
    return Decision(False, f"containers may not {what}")


def decide(who: Identity, method: str, route: str, facts: Facts = Facts()) -> Decision:
    """May `who` call `method route` (the route as registered, e.g. `/v1/apps/{app_id}/stop`)?"""
    if who.is_admin:
        return Decision(True)
    entry = ROUTES.get((method, route))
    if entry is None:
        return _no(f"call {method} {route}")
    rule = entry.rule
    if rule is Rule.DENY:
        return _no(entry.denied)
    if rule is Rule.CREATE_APP and facts.mode != "ephemeral":
        return _no(entry.denied)
    if rule is Rule.CREATE_APP and facts.name_taken:  # its labels would be that app's (web_routes.check_claims)
        return _no("create an app with the name of another running app")
    if rule is Rule.LOOKUP_APP and facts.create_if_missing:
        return _no(entry.denied)
    if rule is Rule.OWN or rule is Rule.CREATED:
        mine = who.created | {who.app_id} if rule is Rule.OWN else who.created
        if facts.app_id not in mine:  # (None, no app named, is in neither)
            return _no(entry.denied)
    if entry.attaches_secrets:
        missing = sorted(facts.secrets - who.secrets)
        if missing:
            return _no(f"give what they create a secret they do not hold ({', '.join(map(repr, missing))})")
        if facts.builds_image:
            return _no("build images (build steps run outside any container): use an image that is already "
                       "built, or deploy it from outside first")
    return Decision(True)
