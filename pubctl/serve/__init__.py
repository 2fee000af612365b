"""``pubctl serve``: the feed over HTTP for viewers.

- ``command``: the click command, start-up checks, the uvicorn server and signals.
- ``app``: the Starlette application, the connection pool and long-poll handling.
- ``listener``: the one LISTEN connection that wakes every waiting long-poll.
- ``page``: a page's body (payloads in RFC 8785 form) and its ETag.
- ``params``: the feed's query parameters, checked strictly.
- ``auth``: bearer tokens and the loopback rule.
- ``metrics``: Prometheus metrics.
"""
