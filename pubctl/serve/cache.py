"""Hot pages from memory: the answers of ``pubctl serve`` kept while the head stands still.

Without ``wait``, a page's answer is a pure function of the question (``after``,
``limit``, ``kinds``) and of what was published, and since revision 0104 what was
published is told entirely by the head (the feed id and its last rev): every change a
reader can see takes a new rev. So a page read while the server's known head was ``H``
answers the same question as long as the head is still ``H``; the server learns every
move of the head (the applier's notification, or the replay poll of a standby, then a
re-read of ``pub.health()``: ``listener.py``), and that move is what invalidates.

Entries are stamped with a *token*, the value of ``FeedServer``'s validity stamp when
the read *started*: the notifier's generation (it counts the head's moves) and an epoch
the server bumps when a read finds revs beyond the head it knows (the database is ahead
of the notification: a later hit could otherwise be older than an answer already
given). A read is kept only if the token is still current when it lands, so a read that
started before the head moved is never kept for the new head, and a lookup hits only
an entry of the current token: the server never answers from memory a page older than
one it already answered from. When the token moves every entry goes at once.

The cache holds pages, not answers: the ``feed_id`` parameter is checked against the
page's feed id on every answer, hit or miss, so a 409 is never kept (nor a 200 served
in its place). It is bounded by entries and by bytes of body, least recently used out.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable

from pubctl.serve.page import Page

DEFAULT_MAX_BYTES = 64 * 2**20
DEFAULT_MAX_ENTRIES = 2048


class PageCache:
    """Pages by question, valid for one token; least recently used first out."""

    def __init__(
        self, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int = DEFAULT_MAX_ENTRIES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entries = max_entries
        self._pages: OrderedDict[Hashable, Page] = OrderedDict()
        self._token: Hashable = None
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._pages)

    def _at(self, token: Hashable) -> None:
        """Entries belong to ``token`` from now on: those of another one go."""
        if token != self._token:
            self._pages.clear()
            self.bytes = 0
            self._token = token

    def get(self, key: Hashable, token: Hashable) -> Page | None:
        """The page kept for ``key`` under ``token`` (the current one), if any."""
        self._at(token)
        page = self._pages.get(key)
        if page is not None:
            self._pages.move_to_end(key)
        return page

    def put(self, key: Hashable, started: Hashable, now: Hashable, page: Page) -> bool:
        """Keep ``page``, read under token ``started``, if that is still the current
        token ``now``. Its body is written here, once, and its rows let go. False when
        not kept."""
        self._at(now)
        if started != now:
            return False
        page.settle()
        size = len(page.body)
        if size > self.max_bytes:
            return False
        old = self._pages.pop(key, None)
        if old is not None:
            self.bytes -= len(old.body)
        self._pages[key] = page
        self.bytes += size
        while self.bytes > self.max_bytes or len(self._pages) > self.max_entries:
            _key, dropped = self._pages.popitem(last=False)
            self.bytes -= len(dropped.body)
        return True

    def clear(self) -> None:
        self._pages.clear()
        self.bytes = 0
