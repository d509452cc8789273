"""The client library a request came from: httpx or httpx2.

Both libraries have the same shapes but distinct classes, and each client checks that
responses and streams are of its own classes. So every response a caller gets is
built from the module that built the caller's request.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["Library", "library_of", "library_of_transport"]


@dataclass(frozen=True, slots=True)
class Library:
    module: ModuleType
    Response: type[Any]
    AsyncByteStream: type[Any]
    SyncByteStream: type[Any]
    RequestError: type[BaseException]

    @property
    def name(self) -> str:
        return self.module.__name__

    def stream_class(self, ours: type[Any], is_async: bool) -> type[Any]:
        """*ours* made a subclass of this library's byte stream base class.

        Clients and transports check streams with isinstance against their own
        library's classes, so a stream of ours must be one of theirs too.
        """
        key = (self.name, ours, is_async)
        cls = _stream_classes.get(key)
        if cls is None:
            base = self.AsyncByteStream if is_async else self.SyncByteStream
            cls = _stream_classes[key] = type(ours.__name__, (ours, base), {})
        return cls

    def default_async_transport(self) -> Any:
        return self.module.AsyncHTTPTransport()

    def default_sync_transport(self) -> Any:
        return self.module.HTTPTransport()


_libraries: dict[type[Any], Library] = {}
_stream_classes: dict[tuple[str, type[Any], bool], type[Any]] = {}
_lock = threading.Lock()


def library_of(request: Any) -> Library:
    """The library whose ``Request`` class built *request* (cached per class)."""
    cls = type(request)
    library = _libraries.get(cls)
    if library is None:
        with _lock:
            module = importlib.import_module(cls.__module__.partition(".")[0])
            library = Library(
                module=module,
                Response=module.Response,
                AsyncByteStream=module.AsyncByteStream,
                SyncByteStream=module.SyncByteStream,
                RequestError=module.RequestError,
            )
            _libraries[cls] = library
    return library


def library_of_transport(transport: Any) -> str | None:
    """``"httpx"`` or ``"httpx2"`` if *transport* is one of that library's transports;
    None for any other object (duck-typed transports serve whichever calls them)."""
    for name in ("httpx", "httpx2"):
        module = sys.modules.get(name)
        if module is not None and isinstance(transport, (module.BaseTransport, module.AsyncBaseTransport)):
            return name
    return None
