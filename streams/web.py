"""The worker's HTTP API (Faust web views); ``streams/openapi.yaml`` documents every shape.

Reads answer from the serving snapshot (:mod:`streams.serving`), taken once per request so
a hot swap never mixes two versions in one answer. Writes (``POST /events``, ``POST
/catalog``, promotion and rollback) need ``Authorization: Bearer $STREAMREC_API_TOKEN`` and
are refused while no token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from pathlib import Path

import faust
import orjson
from aiohttp.web import HTTPRequestEntityTooLarge
from aiokafka.errors import KafkaError
from faust.web import View
from kafka.errors import KafkaError as SyncKafkaError

from learner.recommend import Recommender, Scored, TextRanker, UnknownItem
from runtime.config import Config
from store.registry import (
    RegistryError,
    list_versions,
    promote,
    rollback,
    serving_version,
)
from streams.metrics import REQUEST_SECONDS
from streams.served import ServedLog, new_request_id
from streams.serving import ServingService
from streams.validation import Invalid, Validator

log = logging.getLogger(__name__)
OPENAPI = Path(__file__).resolve().parent / "openapi.yaml"
MAX_K = 200
MAX_QUERY_CHARS = 500
MAX_EXCLUDE = 500


class HTTPProblem(Exception):
    """An error answer: HTTP status and a message saying what to change."""

    def __init__(self, status: int, message: str, **extra):
        super().__init__(message)
        self.status, self.message, self.extra = status, message, extra


def int_param(request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise HTTPProblem(400, f"{name} must be a whole number from {low} to {high}, got {raw[:50]!r}",
                          parameter=name)
    return value


def bool_param(request, name: str) -> bool:
    raw = request.query.get(name, "false").lower()
    if raw not in ("true", "false", "1", "0"):
        raise HTTPProblem(400, f"{name} must be true or false, got {raw[:50]!r}", parameter=name)
    return raw in ("true", "1")


def scored(items: list[Scored], ranker: Recommender | TextRanker | None) -> list[dict]:
    titles = ranker.titles if ranker else {}
    return [{"item_id": s.item_id, "score": round(s.score, 6), "title": titles.get(s.item_id),
             "because": None if s.because is None else {"item_id": s.because[0], "similarity": round(s.because[1], 6)}}
            for s in items]


def excluded(request) -> set[str]:
    """The item ids of the request's ``exclude`` parameters (repeated: ``exclude=a&exclude=b``),
    e.g. what is in the shopper's cart."""
    items = request.query.getall("exclude", [])
    if len(items) > MAX_EXCLUDE:
        raise HTTPProblem(400, f"exclude names {len(items)} items; the limit is {MAX_EXCLUDE}", parameter="exclude")
    return set(items)


def answered_by(ranker: Recommender | TextRanker) -> dict:
    """Which ranker answered: ``source`` and the model version (None for the text ranker)."""
    if isinstance(ranker, Recommender):
        return {"source": "model", "model_version": ranker.version["id"]}
    return {"source": "text", "model_version": None}


class JSONView(View):
    """A view whose JSON is written by orjson (non-finite floats become null)."""

    def json(self, value, *, status: int = 200, headers=None, **kwargs):
        return self.bytes(orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS), content_type="application/json",
                          status=status, headers=headers)


def add_views(app: faust.App, config: Config, serving: ServingService, served_log: ServedLog, events_topic,
              catalog_topic) -> None:
    """Register the API's views on ``app``; every list answered is recorded in ``served_log``."""
    validator = Validator(config.max_payload_bytes, config.max_future_s)

    def view(path: str):
        """Register a view class whose handlers may raise :class:`HTTPProblem`."""
        def register(cls):
            for method in ("get", "post"):
                handler = cls.__dict__.get(method)
                if handler is not None:
                    setattr(cls, method, _answering_problems(handler, path))
            return app.page(path)(cls)
        return register

    def ranker_or_503() -> Recommender | TextRanker:
        """What answers now; 503 only until the worker's first look at the store is done."""
        ranker = serving.ranker
        if ranker is None:
            raise HTTPProblem(503, "the worker is starting: histories and catalog are not loaded yet",
                              retry_after_s=config.serving_poll_s)
        return ranker

    def check_storefront(storefront: str | None) -> None:
        if storefront is not None and storefront not in serving.storefronts():
            raise HTTPProblem(404, f"unknown storefront {storefront[:100]!r}", parameter="storefront")

    async def in_store(fn, *args):
        """``fn(serving.engine, *args)`` on the serving service's store thread; 503 until it has a store."""
        if serving.engine is None:
            raise HTTPProblem(503, "the worker is starting: store not ready", retry_after_s=config.serving_poll_s)
        return await serving.store_thread.run(fn, serving.engine, *args)

    def authorise(request) -> None:
        if not config.api_token:
            raise HTTPProblem(403, "state-changing endpoints are disabled: STREAMREC_API_TOKEN is not set")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {config.api_token}".encode()):
            raise HTTPProblem(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    @view("/recommend/{user_id}")
    class Recommend(JSONView):
        async def get(self, request, user_id: str):
            """Top-k items for a user by the serving version; the storefront's trending items for users
            without history, and for every user while no version serves."""
            k = int_param(request, "k", 20, 1, MAX_K)
            storefront = request.query.get("storefront")
            include_purchased = bool_param(request, "include_purchased")
            check_storefront(storefront)
            ranker = ranker_or_503()  # while the worker starts, histories are not read yet either
            history = serving.histories.recent(user_id)
            exclude = excluded(request) | (set() if include_purchased else serving.histories.purchased(user_id))
            recommender = ranker if isinstance(ranker, Recommender) else None  # the snapshot taken above
            answer = {"request_id": new_request_id(), "user_id": user_id, "storefront": storefront, "k": k}
            shop = storefront or (history[-1].storefront if history else "default")
            if not history or recommender is None:
                top = serving.trending.top(shop, k, exclude)
                answer |= {"source": "trending", "model_version": None,
                           "items": scored([Scored(item, weight) for item, weight in top], ranker)}
            else:
                if storefront is not None and not recommender.knows_storefront(storefront):
                    items = []
                else:
                    items = recommender.recommend(history, k, storefront, exclude)
                answer |= {"source": "model", "model_version": recommender.version["id"],
                           "items": scored(items, recommender)}
            served_log.record("recommend", answer, shop, user_id, request.query.get("session_id"))
            return self.json(answer)

    @view("/similar/{item_id}")
    class Similar(JSONView):
        async def get(self, request, item_id: str):
            """Items nearest to an item by the serving version's item vectors (catalog-only items
            included), or by catalog text while no version serves."""
            k = int_param(request, "k", 20, 1, MAX_K)
            ranker = ranker_or_503()
            try:
                items = ranker.similar(item_id, k)
            except UnknownItem:
                known = "not in the catalog and never seen in events" if isinstance(ranker, Recommender) else (
                    "not in the catalog (while no model version serves, items are compared by their catalog text)")
                raise HTTPProblem(404, f"unknown item {item_id[:100]!r}: {known}")
            answer = {"request_id": new_request_id(), "item_id": item_id, "k": k, **answered_by(ranker),
                      "items": scored(items, ranker)}
            user_id = request.query.get("user_id")
            served_log.record("similar", answer, request.query.get("storefront"), user_id,
                              request.query.get("session_id"), query=item_id)
            return self.json(answer)

    @view("/search")
    class Search(JSONView):
        async def get(self, request):
            """Semantic search over catalog text, personalised for a user with history while a version serves."""
            query = request.query.get("q", "").strip()
            if not query or len(query) > MAX_QUERY_CHARS:
                raise HTTPProblem(400, f"q must be 1 to {MAX_QUERY_CHARS} characters of search text",
                                  parameter="q")
            k = int_param(request, "k", 20, 1, MAX_K)
            user_id = request.query.get("user_id")
            ranker = ranker_or_503()
            vector = await serving.queries.encode(query, ranker.text_encoder)
            exclude = excluded(request)
            if isinstance(ranker, Recommender):
                history = serving.histories.recent(user_id) if user_id else []
                items = ranker.search(vector, k, history, exclude)
            else:
                history, items = [], ranker.search(vector, k, exclude)
            answer = {"request_id": new_request_id(), "query": query, "user_id": user_id, "k": k,
                      "personalised": bool(history), **answered_by(ranker), "items": scored(items, ranker)}
            served_log.record("search", answer, request.query.get("storefront"), user_id,
                              request.query.get("session_id"), query=query)
            return self.json(answer)

    async def accept(request, topic, validate, key_field: str) -> dict:
        """Validate a JSON array like the Kafka path does, produce the valid messages, report the rest."""
        authorise(request)
        try:
            batch = orjson.loads(await request.read())
        except HTTPRequestEntityTooLarge as exc:  # aiohttp refuses bodies over 1 MiB
            raise HTTPProblem(413, f"the body is over the 1 MiB limit ({exc.text}); send fewer events per request")
        except orjson.JSONDecodeError as exc:
            raise HTTPProblem(400, f"the body is not JSON: {exc}")
        if not isinstance(batch, list):
            raise HTTPProblem(400, f"the body must be a JSON array of events, got {type(batch).__name__}")
        if len(batch) > config.post_max_events:
            raise HTTPProblem(413, f"{len(batch)} messages in one request; the limit is {config.post_max_events}")
        rejected, valid = [], []
        for index, obj in enumerate(batch):
            try:
                if not isinstance(obj, dict):
                    raise Invalid("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
                clean = validate(obj)
                value = orjson.dumps(clean)
                if len(value) > config.max_payload_bytes:
                    raise Invalid("payload_too_large", f"{len(value)} bytes, the limit is {config.max_payload_bytes}")
                valid.append((clean[key_field].encode(), value))
            except Invalid as exc:
                rejected.append({"index": index, "reason": exc.reason, "detail": exc.detail})
        try:
            pending = [await topic.send(key=key, value=value) for key, value in valid]
            await asyncio.gather(*pending)
        except (KafkaError, SyncKafkaError, asyncio.TimeoutError) as exc:
            raise HTTPProblem(503, f"the broker did not take the messages, none is accepted: {type(exc).__name__}")
        return {"accepted": len(valid), "rejected": rejected}

    @view("/events")
    class Events(JSONView):
        async def post(self, request):
            """Interaction events as a JSON array; valid ones go to the events topic."""
            return self.json(await accept(request, events_topic, validator.interaction_from_obj, "user_id"))

    @view("/catalog")
    class Catalog(JSONView):
        async def post(self, request):
            """Catalog items as a JSON array; valid ones go to the catalog topic."""
            return self.json(await accept(request, catalog_topic, validator.catalog_from_obj, "item_id"))

    @view("/models")
    class Models(JSONView):
        async def get(self, request):
            """The serving version, what this worker has loaded, and the newest versions."""
            limit = int_param(request, "limit", 10, 1, 100)
            current, versions = await in_store(lambda engine: (serving_version(engine), list_versions(engine, limit)))
            return self.json({"serving": current, "loaded": serving.describe(), "versions": versions})

    @view("/models/{version_id}/promote")
    class Promote(JSONView):
        async def post(self, request, version_id: str):
            """Make a version serve, whatever its gate said."""
            authorise(request)
            if not version_id.isdigit():
                raise HTTPProblem(400, f"version must be a whole number, got {version_id[:50]!r}")
            try:
                await in_store(promote, int(version_id))
            except RegistryError as exc:
                raise HTTPProblem(404, str(exc))
            return self.json({"serving": int(version_id)})

    @view("/models/rollback")
    class Rollback(JSONView):
        async def post(self, request):
            """Retire the serving version; the one promoted before it serves again."""
            authorise(request)
            try:
                retired, serving_now = await in_store(rollback)
            except RegistryError as exc:
                raise HTTPProblem(409, str(exc))
            return self.json({"retired": retired, "serving": serving_now})

    @view("/openapi.yaml")
    class OpenAPI(JSONView):
        async def get(self, request):
            """This API's description."""
            return self.bytes(OPENAPI.read_bytes(), content_type="application/yaml")


def _answering_problems(handler, path: str):
    """``handler`` answering :class:`HTTPProblem` as JSON errors, its latency observed per ``path``."""
    async def answer(self, request, **kwargs):
        started = time.perf_counter()
        try:
            response = await handler(self, request, **kwargs)
        except HTTPProblem as problem:
            headers = {"WWW-Authenticate": "Bearer"} if problem.status == 401 else None
            response = self.json({"error": problem.message, **problem.extra}, status=problem.status, headers=headers)
        except Exception:
            log.exception("%s %s failed", request.method, request.path)
            response = self.json({"error": "internal error; the worker log has the details"}, status=500)
        REQUEST_SECONDS.labels(path, request.method, str(response.status)).observe(time.perf_counter() - started)
        return response
    answer.__doc__ = handler.__doc__
    return answer
