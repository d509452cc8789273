"""uvicorn's httptools protocol, telling the app about targets not in origin form.

httptools hands ASGI only the path of ``GET http://host/x``; the gateway must refuse
such a target rather than serve ``/x`` (it is a request meant for a forward proxy), so
the target as sent is looked at here and a refused one marked in the scope. A module of
its own, imported only to serve: it needs uvicorn, and worker processes find the class
by name.
"""

from __future__ import annotations

from typing import Any, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from ._config import NOT_ORIGIN_FORM

__all__ = ["OriginFormOnly"]


class OriginFormOnly(HttpToolsProtocol):
    def on_headers_complete(self) -> None:
        target = self.url
        super().on_headers_complete()
        # The scope is the request's own dict, read by its task once it starts.
        if not target.startswith(b"/"):
            cast(dict[str, Any], self.scope)[NOT_ORIGIN_FORM] = True
