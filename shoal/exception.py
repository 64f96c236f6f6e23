"""Exception classes with Modal's names, so `except modal.exception.X` works unchanged."""

from __future__ import annotations


class Error(Exception):
    """Base class for every shoal error."""


class TimeoutError(Error):  # noqa: A001 - Modal's name; deliberately not the builtin
    """Base class for shoal timeouts (not a subclass of the builtin TimeoutError, as in Modal)."""


class FunctionTimeoutError(TimeoutError):
    """An attempt ran longer than the function's `timeout`."""


class OutputExpiredError(TimeoutError):
    """The result of a call is older than the retention period (7 days)."""


class SandboxTimeoutError(TimeoutError):
    pass


class VolumeUploadTimeoutError(TimeoutError):
    pass


class RemoteError(Error):
    """The control plane rejected a request or failed to answer it."""


class ExecutionError(Error):
    """Shoal could not run the code: the container crashed, the input was lost, and so on."""


class InvalidError(Error):
    """Invalid use of the API: bad arguments, wrong call for this kind of function."""


class NotFoundError(Error):
    pass


class AlreadyExistsError(Error):
    pass


class AuthError(Error):
    pass


class PermissionDeniedError(Error):
    pass


class ResourceExhaustedError(Error):
    pass


class ConflictError(Error):
    pass


class RequestSizeError(Error):
    pass


class ImageBuildError(Error):
    pass


class InternalFailure(Error):
    pass


class SerializationError(Error):
    """An argument or a result could not be pickled."""


class DeserializationError(Error):
    """An argument or a result could not be unpickled on the other side."""


class VersionError(Error):
    pass


class ClientClosed(Error):
    pass


class ConnectionError(Error):  # noqa: A001 - Modal's name
    pass


class SandboxTerminatedError(Error):
    pass


class SandboxFilesystemError(Error):
    """A file operation in a sandbox failed (`Sandbox.filesystem`); the message says why."""


class SandboxFilesystemNotFoundError(SandboxFilesystemError, NotFoundError, FileNotFoundError):
    pass


class SandboxFilesystemPathAlreadyExistsError(SandboxFilesystemError, AlreadyExistsError, FileExistsError):
    pass


class SandboxFilesystemPermissionError(SandboxFilesystemError, PermissionDeniedError, PermissionError):
    pass


class InputCancellation(BaseException):
    """The input was cancelled: raised by `FunctionCall.get()` on a cancelled call, as in Modal."""


class UserCodeException(Exception):
    """Kept for import compatibility; shoal re-raises the user's own exception instead."""


class DeprecationError(UserWarning):
    """A removed API was used (raised, not warned, as in Modal 1.6)."""


class PendingDeprecationError(UserWarning):
    pass


class AsyncUsageWarning(UserWarning):
    pass


class ServerWarning(UserWarning):
    pass


class NotImplementedWarning(UserWarning):
    """An accepted option that shoal does not act on yet."""
