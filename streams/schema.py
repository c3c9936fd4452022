"""Message types shared by producers, the worker and tests, declared once.

Field types here are the contract documented in the README; :mod:`streams.validation`
enforces them on raw bytes from Kafka or HTTP.
"""

from __future__ import annotations

from typing import Optional, Union

import faust

EVENT_TYPES = ("click", "purchase")
DEFAULT_STOREFRONT = "default"


class InteractionEvent(faust.Record, serializer="json", include_metadata=False):
    """A shopper clicked or bought an item.

    ``ts`` is epoch milliseconds or an ISO-8601 string on the wire; after validation it is
    always epoch milliseconds, UTC. Feedback on a served list: ``request_id`` (the answer's id)
    attributes the event to that list, ``position`` is the item's rank in it (1 = first) and
    ``value`` the order value of a purchase, for revenue metrics.
    """

    event_id: str
    type: str
    user_id: str
    item_id: str
    ts: Union[int, str]
    storefront: str = DEFAULT_STOREFRONT
    session_id: Optional[str] = None
    price: Optional[float] = None
    quantity: Optional[int] = None
    request_id: Optional[str] = None
    position: Optional[int] = None
    value: Optional[float] = None


class CatalogEvent(faust.Record, serializer="json", include_metadata=False):
    """An item was added to or changed in a storefront's catalog."""

    item_id: str
    title: str
    description: Optional[str] = None
    category: Optional[str] = None
    storefront: str = DEFAULT_STOREFRONT
    ts: Optional[Union[int, str]] = None


class DeadLetter(faust.Record, serializer="json", include_metadata=False):
    """A rejected message: where it came from, why, and its bytes (base64)."""

    reason: str
    detail: str
    topic: str
    partition: int
    offset: int
    key: Optional[str]
    payload_b64: str
    received_at: int


SURFACES = ("recommend", "similar", "search")


class ServedList(faust.Record, serializer="json", include_metadata=False):
    """A list a worker answered, logged to ``<prefix>-served`` after the answer.

    ``surface`` is the endpoint, ``query`` the search text or the item of ``/similar``,
    ``source`` the ranker (``model``, ``text`` or ``trending``), ``items`` the item ids in rank
    order with their ``scores``. ``status`` is the HTTP status (None or 200: answered; a 5xx
    when the answer failed after the user was assigned to an experiment arm, with no items),
    ``latency_ms`` how long the view took to build the answer. In an interleaving experiment,
    ``teams`` names the arm that put each item in the list (``control`` or ``treatment``).
    """

    request_id: str
    served_at: int
    surface: str
    storefront: str
    source: str
    items: list
    scores: list
    user_id: Optional[str] = None
    session_id: Optional[str] = None
    query: Optional[str] = None
    model_version: Optional[int] = None
    experiment: Optional[str] = None
    arm: Optional[str] = None
    status: Optional[int] = None
    latency_ms: Optional[float] = None
    teams: Optional[list] = None


class ShownPositions(faust.Record, serializer="json", include_metadata=False):
    """Which positions of a served list the shopper's screen displayed (1 = first), reported by a
    storefront that shows fewer items than it fetched; logged to ``<prefix>-served`` like the list.

    Reports of one list add up (an infinite scroll may report each new row); a list without a
    report counts as wholly shown, one whose reports hold no position as not shown at all.
    ``ts`` is when the positions were displayed (epoch ms or ISO-8601; the worker's clock if absent).
    """

    request_id: str
    shown: list
    ts: Optional[Union[int, str]] = None


class WindowSealed(faust.Record, serializer="json", include_metadata=False):
    """A replay window was sealed in the store; its training trigger is still to be taken."""

    window_id: int
    n_events: int
    seal_reason: str
    sealed_at: int
