"""kvbm's exceptions: one class per kvbm.ErrorCode (include/kvbm/result.h).

Each carries ``code`` (a kvbm.ErrorCode, set on the class by the extension) and
``message`` (the C++ error's message, which names the offending value). Where a
builtin exception fits, the class derives from it too, so that ``except ValueError``
catches a kvbm.InvalidArgumentError.
"""

import builtins


class Error(Exception):
    """Base of every error kvbm raises for a failed call."""

    code = None  # kvbm.ErrorCode, set per class by kvbm._kvbm

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class AllocationFailedError(Error, MemoryError):
    """Memory or file space could not be had."""


class OutOfBoundsError(Error, IndexError):
    """An index, offset or size outside its range."""


class RegistrationFailedError(Error):
    """A backend refused to register memory."""


class AlreadyRegisteredError(Error):
    """The memory or backend is registered already."""


class NotRegisteredError(Error):
    """The storage is not registered (with an agent)."""


class DeviceUnavailableError(Error):
    """No usable GPU, driver or CUDA build."""


class InvalidArgumentError(Error, ValueError):
    """An argument kvbm cannot accept (also untrusted bytes that do not decode)."""


class IoError(Error, OSError):
    """A system call on a file or socket failed."""


class UnsupportedError(Error):
    """No path or backend for this combination."""


class NotFoundError(Error, LookupError):
    """An unknown agent, backend or key."""


class TimeoutError(Error, builtins.TimeoutError):  # noqa: A001 - kvbm.TimeoutError by design
    """Did not finish in time (the operation may still be running)."""


class RemoteError(Error):
    """The peer failed, disappeared or sent something kvbm cannot accept."""


class CancelledError(Error):
    """The operation was cancelled."""


class InternalError(Error):
    """A bug in kvbm."""


__all__ = [name for name, value in dict(globals()).items()
           if isinstance(value, type) and issubclass(value, Error)]

for _name in __all__:
    globals()[_name].__module__ = "kvbm"
del _name
