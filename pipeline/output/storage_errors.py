"""Which storage errors are worth retrying, and how a failure is described without secrets.

One classification for every backend fsspec reaches: when a server answered, its HTTP status
and error code decide; otherwise the exception's type and errno do.
"""

from __future__ import annotations

import errno

from pipeline.redact import redact

_TRANSIENT_STATUS = {500, 502, 503, 504, 429}
_TRANSIENT_CODES = {"SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                    "Throttling", "ThrottlingException", "TooManyRequests"}
_TRANSIENT_NAMES = {"ConnectionClosedError", "EndpointConnectionError", "ReadTimeoutError",
                    "ConnectTimeoutError", "ResponseStreamingError", "ServerDisconnectedError",
                    "ClientOSError", "ClientConnectorError", "IncompleteRead", "ProtocolError",
                    "ClientPayloadError", "FSTimeoutError", "ServerTimeoutError"}
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNABORTED, errno.ECONNREFUSED, errno.ETIMEDOUT,
                     errno.EPIPE}


class StorageError(RuntimeError):
    """A storage call that failed for good; the message names the URL, never a secret."""


def _chain(exc: BaseException | None):
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _answer(exc: BaseException) -> tuple[int | None, str]:
    """(HTTP status, error code) when a server answered, else (None, "")."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return status, str(response.get("Error", {}).get("Code") or "")
    for attr in ("status", "status_code", "code"):  # aiohttp, azure, gcsfs
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value, ""
    return None, ""


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying: 5xx, 429, SlowDown, resets and timeouts.

    When a server answered, its status and code decide (s3fs wraps unknown codes in
    ``OSError(EIO)``, which must not make a 400 look retryable); otherwise the type does.
    """
    for e in _chain(exc):
        status, code = _answer(e)
        if status is not None or code:
            return status in _TRANSIENT_STATUS or code in _TRANSIENT_CODES
    for e in _chain(exc):
        if isinstance(e, (FileNotFoundError, PermissionError, FileExistsError)):
            return False
        if isinstance(e, (ConnectionError, TimeoutError)) or type(e).__name__ in _TRANSIENT_NAMES:
            return True
        if isinstance(e, OSError) and e.errno in _TRANSIENT_ERRNOS:
            return True
    return False


def not_implemented(exc: BaseException) -> bool:
    """The endpoint rejected the conditional-write header itself (501 NotImplemented)."""
    for e in _chain(exc):
        status, code = _answer(e)
        if status == 501 or code == "NotImplemented" or isinstance(e, NotImplementedError):
            return True
    return False


def describe(e: BaseException) -> str:
    """One redacted line naming the error: safe for logs, messages and markers."""
    text = str(e).strip().splitlines()
    return redact(f"{type(e).__name__}: {text[0][:300] if text else ''}")
