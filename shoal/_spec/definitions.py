"""A function's definition: what the SDK registers, the control plane stores and the runtime runs, typed once.

msgspec Structs, because msgspec is a maintained C library that decodes msgpack straight into typed, validated
objects: one declaration is both the type and its check (bounds as `Meta`), decoding is faster than msgpack to
dicts, and a Struct encodes to the same msgpack map the dicts were. Field names are the wire's keys; a key
missing from an older stored definition takes its default, and an unknown key is ignored, so stored state loads.
The SDK's decorators check values with Modal's messages; decoding (control plane, runtime) checks them again.
"""

# No `from __future__ import annotations`: msgspec would evaluate every annotation string when the first decoder is
# built; evaluated here as the classes are made, containers start about a millisecond sooner.
from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from . import limits


def _bounded(lo: float, hi: float | None) -> Any:
    return Meta(ge=lo) if hi is None else Meta(ge=lo, le=hi)


# The bounds of `limits`, checked whenever a definition is decoded.
Timeout = Annotated[int, _bounded(*limits.TIMEOUT_S)]
ScaledownWindow = Annotated[int, _bounded(*limits.SCALEDOWN_WINDOW_S)]
MinContainers = Annotated[int, _bounded(*limits.AUTOSCALER_BOUNDS["min_containers"])]
MaxContainers = Annotated[int, _bounded(*limits.AUTOSCALER_BOUNDS["max_containers"])]
BufferContainers = Annotated[int, _bounded(*limits.AUTOSCALER_BOUNDS["buffer_containers"])]
BatchMaxSize = Annotated[int, _bounded(*limits.BATCH_MAX_SIZE)]
BatchWaitMs = Annotated[int, _bounded(*limits.BATCH_WAIT_MS)]
Port = Annotated[int, _bounded(*limits.PORT)]
Positive = Annotated[int, Meta(ge=1, le=2**31)]
# Numbers a definition carries are finite and in a range the control plane can compute with (no 2**63, no NaN).
Cores = Annotated[float, Meta(ge=0.0, le=4096.0)]
MiB = Annotated[int, Meta(ge=0, le=2**40)]
Seconds = Annotated[float, Meta(ge=0.0, le=float(limits.TIMEOUT_S[1]))]
Concurrency = Annotated[float, Meta(ge=0.0, le=2.0**31)]
Key = Annotated[str, Meta(max_length=4096, pattern=limits.NO_NUL)]  # a tag, a name or an id the store looks up
PeriodPart = Annotated[int, Meta(ge=0, le=10**6)] | Annotated[float, Meta(ge=0.0, le=1e6)]


class RetryPolicy(Struct):
    """`Retries.to_dict()`: the control plane waits `retries.retry_delay(...)` between attempts."""

    max_retries: Annotated[int, _bounded(*limits.RETRIES)]
    backoff_coefficient: Annotated[float, _bounded(*limits.RETRY_BACKOFF)] = 2.0
    initial_delay: Annotated[float, _bounded(*limits.RETRY_INITIAL_DELAY_S)] = 1.0
    max_delay: Annotated[float, _bounded(*limits.RETRY_MAX_DELAY_S)] = 60.0


class Options(Struct):
    """How to run a function: the SDK's `FunctionOptions` (`_options.py`) as it travels."""

    timeout: Timeout = 300
    startup_timeout: Timeout | None = None
    retries: RetryPolicy | None = None
    min_containers: MinContainers | None = None
    max_containers: MaxContainers | None = None
    buffer_containers: BufferContainers | None = None
    scaledown_window: ScaledownWindow | None = None
    cpu: Cores | list[Cores] | None = None  # cores, or [request, limit]
    memory: MiB | list[MiB] | None = None  # MiB, or [request, limit]
    gpu: list[str] | None = None  # "A100-80GB:2", a fallback order
    single_use_containers: bool = False
    max_inputs: Positive = 1  # inputs one container runs at once (@modal.concurrent)
    target_inputs: Positive | None = None
    batch_max_size: BatchMaxSize | None = None  # @modal.batched
    batch_wait_ms: BatchWaitMs | None = None
    serialized: bool = False
    include_source: bool | None = None
    region: list[str] | None = None
    extra: dict[str, str | int | float | bool | None] = {}  # recorded options; only `block_network` is acted on


class SecretRef(Struct, omit_defaults=True):
    """A named secret (resolved when a container starts) or the values of a `Secret.from_dict` themselves."""

    name: Key | None = None
    required_keys: list[str] | None = None
    env: dict[str, str | None] | None = None


class PeriodSchedule(Struct, tag_field="type", tag="period"):
    """`modal.Period(...)`: relativedelta fields, relative to the last deploy."""

    years: PeriodPart = 0
    months: PeriodPart = 0
    weeks: PeriodPart = 0
    days: PeriodPart = 0
    hours: PeriodPart = 0
    minutes: PeriodPart = 0
    seconds: PeriodPart = 0


class CronSchedule(Struct, tag_field="type", tag="cron"):
    """`modal.Cron(...)`: five cron fields on the wall clock of an IANA time zone."""

    cron_string: str
    timezone: str = "UTC"


Schedule = PeriodSchedule | CronSchedule


class WebhookConfig(Struct):
    """A web function's endpoint (`shoal/web.py`): what the runtime serves and the proxy routes to."""

    type: Literal["fastapi", "asgi", "wsgi", "web_server"]
    method: str | None = None
    label: str | None = None
    docs: bool = False
    requires_proxy_auth: bool = False
    custom_domains: list[str] = []
    port: Port | None = None  # web_server
    startup_timeout: Seconds | None = None  # web_server


class ServerConfig(Struct):
    """`@app.server(...)` (`servers.server_config`): the port the class's @enter hooks serve and its request
    knobs. `target_concurrency`/`max_concurrency` None mean unset."""

    port: Port = 8000
    startup_timeout: Seconds = 30.0
    target_concurrency: Concurrency | None = None
    max_concurrency: Positive | None = None
    scaleup_window: Seconds | None = None
    unauthenticated: bool = False
    exit_grace_period: Annotated[float, _bounded(*limits.EXIT_GRACE_PERIOD_S)] = 0.0
    routing_region: str = "us-east"
    compute_region: list[str] | None = None
    h2_enabled: bool = False
    sessioned: bool = False


class VolumeMount(Struct):
    """A Volume mounted into the function's containers, resolved to its id when the app registers."""

    mount_path: str
    volume_id: Key
    name: Key | None = None
    read_only: bool = False


class ClsParam(Struct):
    """A `modal.parameter()`: its name, type name (`params.PARAM_TYPES`) and default, if it has one."""

    name: str
    type: Literal["int", "str", "bytes", "bool"]
    default: Any = UNSET  # UNSET (left out of the map): required

    @property
    def has_default(self) -> bool:
        return self.default is not UNSET


class MethodInfo(Struct):
    """A `@modal.method()` (or web or batched method) of a class."""

    is_generator: bool = False
    is_async: bool = False
    webhook: WebhookConfig | None = None


class Batching(Struct):
    """`@modal.batched(...)`."""

    max_batch_size: BatchMaxSize
    wait_ms: BatchWaitMs


class ClsInfo(Struct):
    """What a class looks like (`cls.inspect_class`): the SDK binds parameters with it, the runtime builds the
    object and runs its hooks, the proxy routes to its web methods."""

    name: str
    params: list[ClsParam] = []
    methods: dict[str, MethodInfo] = {}
    enter: list[str] = []  # @enter hooks, in order (snap=True ones first)
    exit: list[str] = []
    batched: Batching | None = None
    custom_init: bool = False


class ImageSpec(Struct):
    """`Image.to_wire()`: what the control plane builds; once built only `image_id` is kept (build inputs and
    their secrets stay out of containers)."""

    image_id: str
    builder: str | None = None
    python_version: str | None = None
    steps: list[dict[str, Any]] = []  # `_spec.images.STEP_KINDS`, as hashed into the id
    force_base: bool | UnsetType = UNSET  # True: rebuild from the base (left out of the map otherwise)


class BuiltImage(Struct):
    """A built image as containers run it (the backends' `ContainerImage`)."""

    image_id: str
    python: str
    root: str | None = None
    env: dict[str, str] = {}
    workdir: str | None = None
    layers: list[str] | None = None  # an OCI image's layer directories, top first (None: a venv image)
    runtime_dir: str | None = None
    user: str | None = None


class VariantOverrides(Struct, omit_defaults=True):
    """`with_options(...)` in wire form (`_options.option_overrides`): options and extra merged over the
    base's; secrets and volumes, when given, replace the base's."""

    options: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    secrets: list[SecretRef] | None = None
    volumes: list[VolumeMount] | None = None


class FunctionDefinition(Struct):
    """One function (or class service, or Server) as registered: the SDK's part, then what the control plane
    adds (source, built image, deploy generation, variant)."""

    tag: Key
    is_generator: bool = False
    is_async: bool = False
    options: Options = msgspec.field(default_factory=Options)
    secrets: list[SecretRef] = []
    schedule: Schedule | None = None
    app_name: str | None = None
    webhook: WebhookConfig | None = None
    server: ServerConfig | None = None
    volumes: list[VolumeMount] = []
    cls: ClsInfo | None = None
    image: ImageSpec | None = None
    serialized_fn: bytes | None = None  # the function pickled (`serialized=True`), else source_id + module
    source_id: str | None = None  # sha256 of the uploaded source archive
    module: str | None = None
    serve: bool = False  # registered by `shoal serve`
    # Added by the control plane:
    source_dir: str | None = None  # where the source was unpacked
    image_built: BuiltImage | None = None
    generation: int = 0  # the deployed version that set this definition (0: not deployed)
    variant_of: str | None = None  # a variant's base function id
    variant_key: str | None = None
    variant_overrides: VariantOverrides | None = None
    params: bytes | None = None  # a class's packed parameter values (`params.pack_params`)

    def has_web(self) -> bool:
        """A web function, a class with web methods, or a Server: its containers serve HTTP."""
        if self.webhook is not None or self.server is not None:
            return True
        return self.cls is not None and any(m.webhook is not None for m in self.cls.methods.values())


# What the control plane adds to a definition: host paths, built images, versions, variants. Never taken from a
# client (a crafted definition would otherwise mount a host path of its choosing into its containers).
CONTROL_PLANE_FIELDS = ("source_dir", "image_built", "generation", "variant_of", "variant_key", "variant_overrides",
                        "params")

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(FunctionDefinition)
_list_decoder = msgspec.msgpack.Decoder(list[FunctionDefinition])


def encode(definition: FunctionDefinition | list[FunctionDefinition]) -> bytes:
    """The stored (and sent) form: a msgpack map keyed by field name (or an array of them)."""
    return _encoder.encode(definition)


def decode(data: bytes) -> FunctionDefinition:
    """From the stored form, validated; msgspec.ValidationError names the field (`at $.options.timeout`)."""
    return _decoder.decode(data)


def decode_list(data: bytes) -> list[FunctionDefinition]:
    return _list_decoder.decode(data)
