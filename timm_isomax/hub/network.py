"""Requests to the Hugging Face Hub: whether its host can be reached at all, and any failed request as
``(HTTP status, one-line cause)``, whichever HTTP library huggingface_hub runs on. The downloads
(:mod:`.download`) and the push (:mod:`.publish`) word their errors from these."""
from typing import Optional, Tuple

__all__ = ["hub_reachable", "hub_failure"]


def hub_reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub's host opens within ``timeout`` seconds (name lookup included).

    Where it does not (no network, a server that is down), huggingface_hub would retry for ~25 s before
    giving up. Behind a proxy the route is the proxy's: assume reachable and let huggingface_hub try.
    """
    import socket
    import urllib.request
    from urllib.parse import urlparse

    parsed = urlparse(url)
    host, port = parsed.hostname or "", parsed.port or (443 if parsed.scheme == "https" else 80)
    if urllib.request.getproxies().get(parsed.scheme) and not urllib.request.proxy_bypass(host):
        return True
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except (OSError, UnicodeError):  # unknown host, refused, unreachable network, timeout
        return False
    return True


def transport_errors() -> Tuple[type, ...]:
    # the HTTP library under huggingface_hub changed between releases (requests, httpx, httpx2): its
    # connection-level errors, whichever is installed
    import importlib

    found = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "ConnectionError")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def hub_failure(error: BaseException) -> Optional[Tuple[Optional[int], str]]:
    """``(HTTP status or None for a broken connection, one-line cause)`` of a failed Hub request; None if
    ``error`` is no HTTP failure."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(error, HfHubHTTPError) and error.response is not None:
        response = error.response
        status = response.status_code
        reason = getattr(response, "reason_phrase", None) or getattr(response, "reason", "") or ""
        message = (error.server_message or "").strip().splitlines()
        return status, f"the Hub answered {status} {reason}".rstrip() + (f": {message[0].rstrip('.')}" if message else "")
    if isinstance(error, transport_errors()):
        first = str(error).strip().splitlines()
        what = "could not connect" if "connect" in type(error).__name__.lower() else "the connection broke"
        return None, f"{what} ({type(error).__name__}{': ' + first[0] if first else ''})"
    return None

