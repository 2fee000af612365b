"""``pubctl serve``: the feed over HTTP for viewers.

- ``command``: the click command, start-up checks, the uvicorn server and signals.
- ``app``: the Starlette application, the connection pool and long-poll handling.
- ``listener``: the one LISTEN connection, whose notifications are only hints, and the
  notifier that re-reads the last published rev and wakes the long-polls it concerns.
- ``health``: the connection of its own that ``/healthz`` and those re-reads use.
- ``page``: a page's body (payloads in RFC 8785 form) and its ETag.
- ``params``: the feed's query parameters, checked strictly.
- ``auth``: bearer tokens and the loopback rule.
- ``metrics``: Prometheus metrics.
"""
