"""The client library a request came from: httpx or httpx2.

Both libraries have the same shapes but distinct classes, and each client checks that
responses and streams are of its own classes. So every response a caller gets is
built from the module that built the caller's request.

Neither library is imported here, nor anywhere in the package's core: a request of one
can only exist once its program imported it, and importing httpx ourselves would make
``httpx2.alias_httpx()`` (which must come before any ``import httpx``) refuse in a
program that imported httpx_coalesce first. Under the alias, ``httpx`` *is* httpx2 and
every request is httpx2's: nothing else is needed.

A library is known by identity, never looked up by name at run time: a program (or an
SDK's test) may put something else in ``sys.modules["httpx"]``, and a request of the
real httpx must still be answered with the real httpx's classes. So a library's module
is taken once, checked to be the one that defined the request's class, and kept.
"""

from __future__ import annotations

import importlib
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["Library", "library_of"]

#: The packages whose requests, responses and streams this package serves.
NAMES = ("httpx", "httpx2")


@dataclass(frozen=True, slots=True)
class Library:
    module: ModuleType
    Request: type[Any]
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
        key = (self.module.__name__, ours, is_async)  # once per response: no property call
        cls = _stream_classes.get(key)
        if cls is None:
            base = self.AsyncByteStream if is_async else self.SyncByteStream
            cls = _stream_classes[key] = type(ours.__name__, (ours, base), {})
        return cls

    def default_async_transport(self) -> Any:
        return self.module.AsyncHTTPTransport()

    def default_sync_transport(self) -> Any:
        return self.module.HTTPTransport()


#: Each library met so far, by its own name (under the alias, httpx2 is "httpx2").
_known: dict[str, Library] = {}
#: Each request class met so far, and its library.
_libraries: dict[type[Any], Library] = {}
_stream_classes: dict[tuple[str, type[Any], bool], type[Any]] = {}
_lock = threading.Lock()


def _genuine(module: object) -> bool:
    """Whether *module* is httpx or httpx2 itself: its ``Request`` was defined in it.

    A stand-in put in ``sys.modules`` under the library's name is not, nor is a
    module that merely re-exports its names.
    """
    name = getattr(module, "__name__", None)
    request = getattr(module, "Request", None)
    return (
        name in NAMES
        and isinstance(request, type)
        and request.__module__.partition(".")[0] == name
        and all(hasattr(module, needed) for needed in ("Response", "AsyncByteStream", "SyncByteStream"))
    )


def _keep(module: ModuleType) -> Library:
    library = _known.get(module.__name__)
    if library is None or library.module is not module:
        library = _known[module.__name__] = Library(
            module=module,
            Request=module.Request,
            Response=module.Response,
            AsyncByteStream=module.AsyncByteStream,
            SyncByteStream=module.SyncByteStream,
            RequestError=module.RequestError,
        )
    return library


def _keep_imported() -> None:
    """Keep the libraries the program imported before this package, while the names in
    ``sys.modules`` are still theirs (once, at import: see the module's docstring)."""
    for name in NAMES:
        module = sys.modules.get(name)
        if _genuine(module):
            assert isinstance(module, ModuleType)
            _keep(module)


def _from_submodules(name: str) -> ModuleType:
    """The library *name* gathered from its submodules' public names (each lists them in
    ``__all__``, and the package re-exports them): what is left of it when
    ``sys.modules[name]`` holds something else. Its classes are the real ones, so
    responses and errors are those of the client that made the request."""
    view = ModuleType(name)
    for module_name, module in list(sys.modules.items()):
        if module_name.startswith(name + ".") and module is not None:
            for attribute in getattr(module, "__all__", ()):
                if not hasattr(view, attribute) and hasattr(module, attribute):
                    setattr(view, attribute, getattr(module, attribute))
    return view


def _resolve(cls: type[Any]) -> Library:
    for library in _known.values():
        if issubclass(cls, library.Request):
            return library
    # First met: its package (a subclass's too), imported by the name its class gives
    # (already imported, as its request exists), and checked to be the one that defined
    # the class.
    names = dict.fromkeys(base.__module__.partition(".")[0] for base in cls.__mro__)
    for name in names:
        if name not in NAMES:
            continue
        module: object
        try:
            module = importlib.import_module(name)
        except ImportError:  # sys.modules[name] is None: "not installed", for a test
            module = None
        if not (_genuine(module) and issubclass(cls, module.Request)):  # type: ignore[union-attr]
            # sys.modules[name] was replaced after this request's class was made: the
            # library is still whole in its submodules.
            module = _from_submodules(name)
        if _genuine(module) and issubclass(cls, module.Request):  # type: ignore[union-attr]
            assert isinstance(module, ModuleType)
            return _keep(module)
    raise TypeError(
        f"CoalescingTransport: a request of class {cls.__module__}.{cls.__qualname__} is not of "
        f"httpx or httpx2 as imported now (was sys.modules['httpx'] replaced? import "
        f"httpx_coalesce before replacing it)"
    )


def library_of(request: Any) -> Library:
    """The library whose ``Request`` class built *request* (cached per class)."""
    cls = type(request)
    library = _libraries.get(cls)
    if library is None:
        with _lock:
            library = _libraries[cls] = _resolve(cls)
    return library


_keep_imported()
