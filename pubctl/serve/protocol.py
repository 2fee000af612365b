"""uvicorn's httptools protocol with a bounded request target.

httptools cannot parse a URL longer than 64 KiB (its offsets are 16-bit), and uvicorn
would answer such a request with a plain-text 400 before the application sees it; it
would also keep every byte of the URL in memory while it arrives. This protocol keeps
at most ``URL_LIMIT`` bytes of the target and passes its real length to the
application in the ASGI scope (``pubctl.url_bytes``), so that an over-long query string
gets the feed's usual JSON 400 naming the parameter.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

URL_LIMIT = 60 * 1024
SCOPE_KEY = "pubctl.url_bytes"


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """Keeps at most ``URL_LIMIT`` bytes of each request target."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._url_bytes = 0

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._url_bytes = 0

    def on_url(self, url: bytes) -> None:
        self._url_bytes += len(url)
        room = URL_LIMIT - len(self.url)
        if room > 0:
            self.url += url[:room]

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._url_bytes > URL_LIMIT:
            self.scope[SCOPE_KEY] = self._url_bytes  # type: ignore[literal-required]
