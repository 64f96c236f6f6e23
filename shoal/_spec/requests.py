"""What each route of the control plane's API accepts: a msgspec Struct per request body or query, checked once at
the edge (`controlplane/rest.py` decodes into them), so a wrong type, a number out of range, a NaN, an oversized
list or a name outside Modal's rules is a 400 naming the field (`$.options.min_containers`) and nothing
unchecked reaches the store.

Unknown keys are ignored (an older or newer SDK may send more); missing keys take their defaults. Queries are
decoded from their strings (`?after=3`) with the same types.
"""

# No `from __future__ import annotations`: msgspec evaluates the annotations when a decoder is built.
from typing import Annotated, Literal

from msgspec import UNSET, Meta, Struct, UnsetType

from . import limits
from .definitions import FunctionDefinition, ImageSpec
from .secrets import MAX_VALUE

# -- scalars -----------------------------------------------------------------------------------------------------
Name = Annotated[str, Meta(min_length=1, max_length=limits.NAME_MAX, pattern=limits.NAME_PATTERN)]
Text = Annotated[str, Meta(max_length=4096, pattern=limits.NO_NUL)]  # tags, ids, paths, methods
Id = Annotated[str, Meta(min_length=1, max_length=128, pattern=limits.NO_NUL)]
Index = Annotated[int, Meta(ge=0, le=2**53)]  # an input's position in a map
Cursor = Annotated[int, Meta(ge=-1, le=2**53)]  # "after this sequence number" (-1: from the start)
Version = Annotated[int, Meta(ge=1, le=2**31)]
Page = Annotated[int, Meta(ge=1, le=10_000)]
Strategy = Literal["rolling", "recreate"]
Kind = Literal["dict", "queue", "volume"]
Partition = Annotated[str, Meta(min_length=1, max_length=64, pattern=limits.NO_NUL)]  # characters; bytes checked too
SecretValue = Annotated[str, Meta(max_length=MAX_VALUE)]
Ttl = Annotated[float, Meta(ge=0.0, le=10 * 365 * 86400.0)]
Wait = Annotated[float, Meta(ge=0.0, le=1e9)]  # a wait a client asks for; the route clamps it to MAX_WAIT_S


# -- apps and deploys --------------------------------------------------------------------------------------------
class CreateApp(Struct):
    name: Name | None = None
    mode: Literal["ephemeral", "deployed"] = "ephemeral"
    detach: bool = False


class RegisterFunctions(Struct):
    functions: list[FunctionDefinition]
    strategy: Strategy | None = None


class Deploy(Struct):
    functions: list[FunctionDefinition]
    name: Name | None = None  # required: left out, the route says "a deployed app needs a name"
    strategy: Strategy | None = None
    tag: Annotated[str, Meta(max_length=256, pattern=limits.NO_NUL)] | None = None


class AppLookup(Struct):
    name: Name
    create_if_missing: bool = False


class Rollback(Struct):
    strategy: Strategy | None = None
    version: Version | None = None


class LogsQuery(Struct):
    after: Cursor = -1
    timeout: Wait = 0.0
    session: str | None = None


# -- calls -------------------------------------------------------------------------------------------------------
class CreateCall(Struct):
    kind: Literal["remote", "spawn", "gen", "map"]
    args: bytes | None = None
    call_id: Annotated[str, Meta(max_length=64, pattern=r"^fc-[A-Za-z0-9]+$")] | None = None
    method: Text | None = None
    wait: Wait = limits.MAX_WAIT_S
    parent_input_id: Id | None = None  # the input whose code made this call (a call made in a container)


class CreateVariant(Struct):
    params: bytes | None = None
    options: dict[str, object] | None = None  # `VariantOverrides`, checked against what may be overridden


class AddInputs(Struct):
    items: Annotated[list[tuple[Index, bytes]], Meta(max_length=1_000_000)]
    last: bool = False


class OutputsQuery(Struct):
    after: Cursor = -1
    timeout: Wait = 0.0
    limit: Page = 1000


class ResultQuery(Struct):
    index: Index = 0
    timeout: Wait = 0.0


class StartSession(Struct):
    """`Server.sessions.start()`."""

    idle_timeout: Annotated[int, Meta(ge=limits.SESSION_IDLE_S[0], le=limits.SESSION_IDLE_S[1])]
    wait: Wait = limits.MAX_WAIT_S


class TerminateSession(Struct):
    token: Text


class CancelCall(Struct):
    terminate_containers: bool = False


class FunctionLookupQuery(Struct):
    app_name: Text = ""
    tag: Text = ""


class WebUrlQuery(Struct):
    method: Text | None = None


class RequestsQuery(Struct):
    limit: Page = 100


Count = Annotated[int, Meta(ge=0, le=2**31)]
NonNegative = Annotated[float, Meta(ge=0.0, le=1e9)]


class AutoscalerUpdate(Struct, forbid_unknown_fields=True):
    """`autoscaler.update(...)`: the knobs given, typed here; their bounds (and min <= max) are the autoscaler's
    own check, with its messages. Left out or None: unchanged."""

    min_containers: Count | None | UnsetType = UNSET
    max_containers: Count | None | UnsetType = UNSET
    buffer_containers: Count | None | UnsetType = UNSET
    scaledown_window: Count | None | UnsetType = UNSET
    target_concurrency: NonNegative | None | UnsetType = UNSET  # a Server's
    scaleup_window: NonNegative | None | UnsetType = UNSET


class ContainerLogsQuery(Struct):
    after: Cursor = -1
    timeout: Wait = 0.0


class StopContainer(Struct):
    graceful: bool = False


# -- Dicts, Queues and named objects -----------------------------------------------------------------------------
class ObjectLookup(Struct):
    kind: Kind
    name: Name | None = None
    create_if_missing: bool = False
    allow_existing: bool = True
    must_create: bool = False
    app_id: Id | None = None


class ObjectsQuery(Struct):
    kind: Kind | Literal[""] = ""


class DictKey(Struct):
    key: bytes


class DictPut(Struct):
    key: bytes
    value: bytes
    skip_if_exists: bool = False


class DictUpdate(Struct):
    items: list[tuple[bytes, bytes]]


class DictItems(Struct):
    after: bytes | None = None
    limit: Annotated[int, Meta(ge=1, le=1000)] | None = None


class Empty(Struct):
    pass


class QueuePut(Struct):
    values: list[bytes]
    partition: Partition | None = None
    partition_ttl: Ttl | None = None
    timeout: Wait | None = None


class QueueGet(Struct):
    partition: Partition | None = None
    n: Annotated[int, Meta(ge=1, le=2**31)] | None = None
    timeout: Wait | None = None


class QueueLen(Struct):
    partition: Partition | None = None
    total: bool = False


class QueueClear(Struct):
    partition: Partition | None = None
    all: bool = False


class QueuePeek(Struct):
    partition: Partition | None = None
    n: Annotated[int, Meta(ge=1, le=2**31)] | None = None


class PeekQuery(Struct):
    n: Annotated[int, Meta(ge=1, le=2**31)] | None = None


# -- secrets and proxy tokens ------------------------------------------------------------------------------------
Env = dict[str, SecretValue]  # keys: `secrets.KEY_RE`, checked by the route (its message names the key)


class CreateSecret(Struct):
    name: Name
    env: Annotated[Env, Meta(min_length=1, max_length=1000)]
    overwrite: bool = False
    allow_existing: bool = False


class SecretPath(Struct):
    name: Name


class UpdateSecret(Struct):
    env: Annotated[Env, Meta(min_length=1, max_length=1000)]


class CreateProxyToken(Struct):
    scope: Annotated[list[Name], Meta(max_length=100)] = []


class ProxyTokenApp(Struct):
    app: Name


# -- Volumes -----------------------------------------------------------------------------------------------------
class RenameVolume(Struct):
    old_name: Name
    new_name: Name


class EntriesQuery(Struct):
    path: Text = "/"
    recursive: bool = False


class FileQuery(Struct):
    path: Text = ""


class RemovePath(Struct):
    path: Text
    recursive: bool = False


class CopyPaths(Struct):
    src_paths: Annotated[list[Text], Meta(min_length=1, max_length=100_000)]
    dst_path: Text
    recursive: bool = False


class CommitUpload(Struct):
    files: Annotated[list[tuple[Index, Text, Annotated[int, Meta(ge=0, le=0o7777)]]], Meta(max_length=1_000_000)]
    force: bool = False


class UploadPath(Struct):
    volume_id: Id
    upload_id: Id
    index: Index


class ContainerVolume(Struct):
    """A container's own request about a mounted Volume (commit, reload), proven by its token."""

    container_id: Id | None = None
    container_token: Text | None = None


# -- sandboxes (controlplane/sandboxes.py) -----------------------------------------------------------------------
Arg = Annotated[str, Meta(max_length=65536, pattern=limits.NO_NUL)]
Argv = Annotated[list[Arg], Meta(max_length=4096)]
Env = Annotated[dict[Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^[^\x00=]*$")], Arg],
                Meta(max_length=1024)]
Tags = Annotated[dict[Annotated[str, Meta(max_length=256, pattern=limits.NO_NUL)],
                      Annotated[str, Meta(max_length=4096, pattern=limits.NO_NUL)]], Meta(max_length=64)]
Port = Annotated[int, Meta(ge=limits.PORT[0], le=limits.PORT[1])]
SandboxTimeout = Annotated[float, Meta(gt=0.0, le=float(limits.TIMEOUT_S[1]))]
Offset = Annotated[int, Meta(ge=0, le=2**53)]
FdName = Literal["stdout", "stderr"]


class SandboxVolume(Struct):
    path: Annotated[str, Meta(min_length=2, max_length=4096, pattern=r"^/[^\x00]*$")]
    volume_name: Name
    read_only: bool = False


class ReadinessProbe(Struct):
    tcp_port: Port | None = None
    exec_argv: Argv | None = None
    interval_ms: Annotated[int, Meta(ge=1, le=3_600_000)] = 100


class SandboxCreate(Struct):
    app_id: Id
    name: Name | None = None
    tags: Tags = {}
    image: ImageSpec | None = None
    command: Argv = []  # empty: wait until terminated or timed out
    env: Env = {}
    secret_names: Annotated[list[Name], Meta(max_length=256)] = []
    volumes: Annotated[list[SandboxVolume], Meta(max_length=64)] = []
    timeout: SandboxTimeout = 300.0
    idle_timeout: SandboxTimeout | None = None
    workdir: Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$")] | None = None
    cpu: Annotated[float, Meta(gt=0.0, le=4096.0)] | Annotated[list[float], Meta(min_length=2, max_length=2)] \
        | None = None
    memory: Annotated[int, Meta(gt=0, le=2**40)] | Annotated[list[int], Meta(min_length=2, max_length=2)] \
        | None = None
    gpu: Annotated[str, Meta(max_length=256, pattern=limits.NO_NUL)] | None = None
    block_network: bool = False
    outbound_cidr_allowlist: Annotated[list[Text], Meta(max_length=1024)] | None = None
    encrypted_ports: Annotated[list[Port], Meta(max_length=64)] = []
    unencrypted_ports: Annotated[list[Port], Meta(max_length=64)] = []
    h2_ports: Annotated[list[Port], Meta(max_length=64)] = []
    pty: bool = False
    readiness_probe: ReadinessProbe | None = None


class SandboxByName(Struct):
    app_name: Name
    name: Name


class SandboxWait(Struct):
    timeout: Wait = limits.MAX_WAIT_S


class StreamRead(Struct):
    fd: FdName = "stdout"
    offset: Offset = 0
    timeout: Wait = 0.0


class StreamWrite(Struct):
    offset: Offset = 0  # where `data` starts in the stream: a resent chunk is written once
    data: Annotated[bytes, Meta(max_length=limits.BODY_MAX - 1024)] = b""
    eof: bool = False


class SandboxTags(Struct):
    tags: Tags


class ExecCreate(Struct):
    argv: Annotated[list[Arg], Meta(min_length=1, max_length=4096)]
    workdir: Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$")] | None = None
    env: Env = {}
    secret_names: Annotated[list[Name], Meta(max_length=256)] = []
    timeout: SandboxTimeout | None = None
    pty: bool = False


class FsOp(Struct):
    path: Annotated[str, Meta(min_length=1, max_length=4096, pattern=r"^/[^\x00]*$")]
    data: Annotated[bytes, Meta(max_length=limits.DATA_BODY_MAX - 4096)] = b""
    recursive: bool = False
    parents: bool = False


# -- images ------------------------------------------------------------------------------------------------------
ImageId = Annotated[str, Meta(pattern=r"^im-[0-9a-f]{64}$")]


class ImagePath(Struct):
    image_id: ImageId


class PruneImages(Struct):
    grace_s: Ttl | None = None  # images unused for at least this long go (default: SHOAL_IMAGE_GC_GRACE)
    dry_run: bool = False  # only say what would go
