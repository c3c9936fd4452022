"""The worker's HTTP API (Faust web views); ``streams/openapi.yaml`` documents every shape.

Each view is a class at module level with its ``path``; :func:`add_views` registers them with
the :class:`Api` they answer from. Reads answer from the serving snapshot
(:mod:`serving.service`), taken once per request so a hot swap never mixes two versions in one
answer. Writes (``POST /events``, ``/catalog``, ``/shown``, promotion, rollback and
experiments) need ``Authorization: Bearer $STREAMREC_API_TOKEN`` and are refused while no
token is configured.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import ClassVar

import faust
import orjson
from aiohttp.web import HTTPRequestEntityTooLarge
from aiokafka.errors import KafkaError
from faust.web import View
from kafka.errors import KafkaError as SyncKafkaError

from drift.experiments import team_draft
from runtime.config import Config
from serving.rankers import Recommender, Scored, TextRanker, UnknownItem
from serving.service import ServingService
from store.experiments import (
    ExperimentError,
    get_experiment,
    list_experiments,
    list_rollouts,
    start_experiment,
    stop_experiment,
)
from store.registry import (
    RegistryError,
    list_versions,
    promote,
    rollback,
    serving_version,
)
from streams.metrics import REQUEST_SECONDS
from streams.rollout import RolloutService, experiment_status
from streams.served import ServedLog, new_request_id
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


def elapsed_ms(started: float) -> float:
    """Milliseconds since ``started`` (a :func:`time.perf_counter` reading)."""
    return (time.perf_counter() - started) * 1000


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


class Api:
    """What the views answer from and write to: the settings, the serving service, the served-list
    log, the topics they produce to and the rollout service (experiments are read and changed on
    its store thread)."""

    def __init__(self, config: Config, serving: ServingService, served_log: ServedLog, events_topic, catalog_topic,
                 served_topic, rollout: RolloutService):
        self.config, self.serving, self.served_log, self.rollout = config, serving, served_log, rollout
        self.events_topic, self.catalog_topic, self.served_topic = events_topic, catalog_topic, served_topic
        self.validator = Validator(config.max_payload_bytes, config.max_future_s)

    def ranker_or_503(self) -> Recommender | TextRanker:
        """What answers now; 503 only until the worker's first look at the store is done."""
        ranker = self.serving.ranker
        if ranker is None:
            raise HTTPProblem(503, "the worker is starting: histories and catalog are not loaded yet",
                              retry_after_s=self.config.serving_poll_s)
        return ranker

    def chosen(self, user_id: str | None) -> tuple[Recommender | TextRanker, dict]:
        """What answers ``user_id``: their experiment arm's snapshot (with the answer's ``experiment``
        and ``arm``) while an experiment runs, else the serving ranker (no extra keys)."""
        ranker = self.ranker_or_503()
        arm = self.serving.arm_for(user_id)
        if arm is None:
            return ranker, {}
        experiment, name, recommender = arm
        return recommender, {"experiment": experiment, "arm": name}

    @contextmanager
    def failures_logged(self, surface: str, answer: dict, ranker, storefront: str | None, user_id: str | None,
                        request, started: float, query: str | None = None):
        """An answer of an experiment arm that fails is logged as a served list with status 500 and
        no items (the arm's error-rate guardrail); the failure then answers 500 as usual."""
        try:
            yield
        except HTTPProblem:
            raise
        except Exception:
            if answer.get("experiment"):
                self.served_log.record(surface, answer | {"source": "model", "model_version": ranker.version["id"],
                                                          "items": []},
                                       storefront, user_id, request.query.get("session_id"), query,
                                       latency_ms=elapsed_ms(started), status=500)
            raise

    def check_storefront(self, storefront: str | None) -> None:
        if storefront is not None and storefront not in self.serving.storefronts():
            raise HTTPProblem(404, f"unknown storefront {storefront[:100]!r}", parameter="storefront")

    async def in_store(self, fn, *args):
        """``fn(engine, *args)`` on the serving service's store thread; 503 until it has a store."""
        if self.serving.engine is None:
            raise HTTPProblem(503, "the worker is starting: store not ready", retry_after_s=self.config.serving_poll_s)
        return await self.serving.store_thread.run(fn, self.serving.engine, *args)

    def authorise(self, request) -> None:
        if not self.config.api_token:
            raise HTTPProblem(403, "state-changing endpoints are disabled: STREAMREC_API_TOKEN is not set")
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {self.config.api_token}".encode()):
            raise HTTPProblem(401, "missing or wrong bearer token (Authorization: Bearer <token>)")

    async def accept(self, request, topic, validate, key_field: str) -> dict:
        """Validate a JSON array like the Kafka path does, produce the valid messages, report the rest."""
        self.authorise(request)
        try:
            batch = orjson.loads(await request.read())
        except HTTPRequestEntityTooLarge as exc:  # aiohttp refuses bodies over 1 MiB
            raise HTTPProblem(413, f"the body is over the 1 MiB limit ({exc.text}); send fewer events per request")
        except orjson.JSONDecodeError as exc:
            raise HTTPProblem(400, f"the body is not JSON: {exc}")
        if not isinstance(batch, list):
            raise HTTPProblem(400, f"the body must be a JSON array of events, got {type(batch).__name__}")
        if len(batch) > self.config.post_max_events:
            raise HTTPProblem(413, f"{len(batch)} messages in one request; the limit is {self.config.post_max_events}")
        rejected, valid = [], []
        for index, obj in enumerate(batch):
            try:
                if not isinstance(obj, dict):
                    raise Invalid("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
                clean = validate(obj)
                value = orjson.dumps(clean)
                if len(value) > self.config.max_payload_bytes:
                    raise Invalid("payload_too_large",
                                  f"{len(value)} bytes, the limit is {self.config.max_payload_bytes}")
                valid.append((clean[key_field].encode(), value))
            except Invalid as exc:
                rejected.append({"index": index, "reason": exc.reason, "detail": exc.detail})
        try:
            pending = [await topic.send(key=key, value=value) for key, value in valid]
            await asyncio.gather(*pending)
        except (KafkaError, SyncKafkaError, asyncio.TimeoutError) as exc:
            raise HTTPProblem(503, f"the broker did not take the messages, none is accepted: {type(exc).__name__}")
        return {"accepted": len(valid), "rejected": rejected}

    async def experiments_do(self, fn, *args):
        """``fn(engine, *args)`` on the rollout service's store thread (reports can take a while);
        an :class:`ExperimentError` answers 400, 404 or 409."""
        if self.serving.engine is None:
            raise HTTPProblem(503, "the worker is starting: store not ready", retry_after_s=self.config.serving_poll_s)
        try:
            return await self.rollout.store_thread.run(fn, self.serving.engine, *args)
        except ExperimentError as exc:
            raise HTTPProblem({"invalid": 400, "missing": 404}.get(exc.kind, 409), str(exc))

    def with_reports(self, engine, limit: int) -> list[dict]:
        return [e | {"report": experiment_status(engine, self.config, e)} for e in list_experiments(engine, limit)]


class ApiView(JSONView):
    """A view of the API at module level; :func:`add_views` registers it at its ``path`` with the
    :class:`Api` it answers from."""

    path: ClassVar[str]
    api: ClassVar[Api]


class Recommend(ApiView):
    path = "/recommend/{user_id}"

    async def get(self, request, user_id: str):
        """Top-k items for a user by the serving version; the storefront's trending items for users
        without history, and for every user while no version serves."""
        api = self.api
        started = time.perf_counter()
        k = int_param(request, "k", 20, 1, MAX_K)
        storefront = request.query.get("storefront")
        include_purchased = bool_param(request, "include_purchased")
        api.check_storefront(storefront)
        ranker, arm = api.chosen(user_id)  # while the worker starts, histories are not read yet either
        history = api.serving.histories.recent(user_id)
        exclude = excluded(request) | (set() if include_purchased else api.serving.histories.purchased(user_id))
        recommender = ranker if isinstance(ranker, Recommender) else None  # the snapshot taken above
        answer = {"request_id": new_request_id(), "user_id": user_id, "storefront": storefront, "k": k, **arm}
        shop = storefront or (history[-1].storefront if history else "default")
        pair = api.serving.interleaving_for(user_id) if history and recommender is not None else None
        teams = None
        with api.failures_logged("recommend", answer, ranker, shop, user_id, request, started):
            if pair is not None:
                answer["experiment"], control, treatment = pair[0], pair[1], pair[2]
                answer |= {"arm": "interleaved", "source": "model", "model_version": control.version["id"]}
                ranked = {team: [] if storefront is not None and not r.knows_storefront(storefront)
                          else r.recommend(history, k, storefront, exclude)
                          for team, r in (("control", control), ("treatment", treatment))}
                order, teams = team_draft(*([s.item_id for s in ranked[t]] for t in ("control", "treatment")),
                                          k, answer["request_id"])
                by_item = {t: {s.item_id: s for s in ranked[t]} for t in ranked}
                answer["items"] = scored([by_item[t][i] for i, t in zip(order, teams)], control)
            elif not history or recommender is None:
                top = api.serving.trending.top(shop, k, exclude)
                answer |= {"source": "trending", "model_version": None,
                           "items": scored([Scored(item, weight) for item, weight in top], ranker)}
            else:
                if storefront is not None and not recommender.knows_storefront(storefront):
                    items = []
                else:
                    items = recommender.recommend(history, k, storefront, exclude)
                answer |= {"source": "model", "model_version": recommender.version["id"],
                           "items": scored(items, recommender)}
        api.served_log.record("recommend", answer, shop, user_id, request.query.get("session_id"),
                              latency_ms=elapsed_ms(started), teams=teams)
        return self.json(answer)


class Similar(ApiView):
    path = "/similar/{item_id}"

    async def get(self, request, item_id: str):
        """Items nearest to an item by the serving version's item vectors (catalog-only items
        included), or by catalog text while no version serves."""
        api = self.api
        started = time.perf_counter()
        k = int_param(request, "k", 20, 1, MAX_K)
        user_id = request.query.get("user_id")
        ranker, arm = api.chosen(user_id)
        answer = {"request_id": new_request_id(), "item_id": item_id, "k": k, **arm, **answered_by(ranker)}
        with api.failures_logged("similar", answer, ranker, request.query.get("storefront"), user_id, request,
                                 started, item_id):
            try:
                items = ranker.similar(item_id, k)
            except UnknownItem:
                known = "not in the catalog and never seen in events" if isinstance(ranker, Recommender) else (
                    "not in the catalog (while no model version serves, items are compared by their catalog "
                    "text)")
                raise HTTPProblem(404, f"unknown item {item_id[:100]!r}: {known}")
            answer["items"] = scored(items, ranker)
        api.served_log.record("similar", answer, request.query.get("storefront"), user_id,
                              request.query.get("session_id"), query=item_id, latency_ms=elapsed_ms(started))
        return self.json(answer)


class Search(ApiView):
    path = "/search"

    async def get(self, request):
        """Semantic search over catalog text, personalised for a user with history while a version serves."""
        api = self.api
        query = request.query.get("q", "").strip()
        if not query or len(query) > MAX_QUERY_CHARS:
            raise HTTPProblem(400, f"q must be 1 to {MAX_QUERY_CHARS} characters of search text",
                              parameter="q")
        started = time.perf_counter()
        k = int_param(request, "k", 20, 1, MAX_K)
        user_id = request.query.get("user_id")
        ranker, arm = api.chosen(user_id)
        exclude = excluded(request)
        answer = {"request_id": new_request_id(), "query": query, "user_id": user_id, "k": k, **arm,
                  **answered_by(ranker)}
        with api.failures_logged("search", answer, ranker, request.query.get("storefront"), user_id, request,
                                 started, query):
            vector = await api.serving.queries.encode(query, ranker.text_encoder)
            if isinstance(ranker, Recommender):
                history = api.serving.histories.recent(user_id) if user_id else []
                items = ranker.search(vector, k, history, exclude)
            else:
                history, items = [], ranker.search(vector, k, exclude)
            answer |= {"personalised": bool(history), "items": scored(items, ranker)}
        api.served_log.record("search", answer, request.query.get("storefront"), user_id,
                              request.query.get("session_id"), query=query, latency_ms=elapsed_ms(started))
        return self.json(answer)


class Events(ApiView):
    path = "/events"

    async def post(self, request):
        """Interaction events as a JSON array; valid ones go to the events topic."""
        api = self.api
        return self.json(await api.accept(request, api.events_topic, api.validator.interaction_from_obj, "user_id"))


class Catalog(ApiView):
    path = "/catalog"

    async def post(self, request):
        """Catalog items as a JSON array; valid ones go to the catalog topic."""
        api = self.api
        return self.json(await api.accept(request, api.catalog_topic, api.validator.catalog_from_obj, "item_id"))


class Shown(ApiView):
    path = "/shown"

    async def post(self, request):
        """Which positions of served lists were displayed, as a JSON array of
        ``{"request_id", "shown", "ts"}``; valid reports go to the served topic."""
        api = self.api
        return self.json(await api.accept(request, api.served_topic, api.validator.shown_from_obj, "request_id"))


class Models(ApiView):
    path = "/models"

    async def get(self, request):
        """The serving version, what this worker has loaded, and the newest versions."""
        api = self.api
        limit = int_param(request, "limit", 10, 1, 100)
        current, versions, decisions = await api.in_store(lambda engine: (
            serving_version(engine), list_versions(engine, limit), list_rollouts(engine, limit)))
        return self.json({"serving": current, "loaded": api.serving.describe(), "versions": versions,
                          "rollouts": decisions})


class Promote(ApiView):
    path = "/models/{version_id}/promote"

    async def post(self, request, version_id: str):
        """Make a version serve, whatever its gate said."""
        api = self.api
        api.authorise(request)
        if not version_id.isdigit():
            raise HTTPProblem(400, f"version must be a whole number, got {version_id[:50]!r}")
        try:
            await api.in_store(promote, int(version_id))
        except RegistryError as exc:
            raise HTTPProblem(404, str(exc))
        return self.json({"serving": int(version_id)})


class Rollback(ApiView):
    path = "/models/rollback"

    async def post(self, request):
        """Retire the serving version; the one promoted before it serves again."""
        api = self.api
        api.authorise(request)
        try:
            retired, serving_now = await api.in_store(rollback)
        except RegistryError as exc:
            raise HTTPProblem(409, str(exc))
        return self.json({"retired": retired, "serving": serving_now})


class Experiments(ApiView):
    path = "/experiments"

    async def get(self, request):
        """Experiments (the running one first, then the newest), each with its report."""
        api = self.api
        limit = int_param(request, "limit", 5, 1, 50)
        return self.json({"experiments": await api.experiments_do(api.with_reports, limit)})

    async def post(self, request):
        """Start an experiment: ``{"name", "treatment", "control" (default: the serving version),
        "share" (default 0.5; 1 when interleaving), "salt" (default: the name), "kind"
        (``manual``, the default, or ``interleave``)}``."""
        api = self.api
        api.authorise(request)
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            raise HTTPProblem(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict) or not isinstance(body.get("name"), str) or \
                not _whole(body.get("treatment")) or not (body.get("control") is None or _whole(body["control"])):
            raise HTTPProblem(400, 'the body must be {"name": text, "treatment": version, "control": version '
                                   '(optional), "share": number (optional), "salt": text (optional), "kind": '
                                   '"manual" or "interleave" (optional)}')
        kind = body.get("kind", "manual")
        if not isinstance(kind, str):
            raise HTTPProblem(400, f"kind must be 'manual' or 'interleave', got {str(kind)[:50]!r}")
        share = body.get("share", 1.0 if kind == "interleave" else 0.5)
        if isinstance(share, bool) or not isinstance(share, (int, float)):
            raise HTTPProblem(400, f"share must be a number between 0 and 1, got {str(share)[:50]!r}")
        salt = body.get("salt")
        if salt is not None and (not isinstance(salt, str) or not 0 < len(salt) <= 64):
            raise HTTPProblem(400, "salt must be text of 1 to 64 characters")
        started = await api.experiments_do(lambda engine: start_experiment(
            engine, body["name"], body["treatment"], body.get("control"), float(share), salt, kind=kind))
        return self.json(started)


class StopExperiment(ApiView):
    path = "/experiments/{name}/stop"

    async def post(self, request, name: str):
        """Stop an experiment; a canary's candidate is rolled back."""
        api = self.api
        api.authorise(request)
        stopped = await api.experiments_do(stop_experiment, name, "api", api.config.canary_share)
        return self.json({"stopped": name, "kind": stopped["kind"],
                          "experiment": await api.experiments_do(get_experiment, name)})


class OpenAPI(ApiView):
    path = "/openapi.yaml"

    async def get(self, request):
        """This API's description."""
        return self.bytes(OPENAPI.read_bytes(), content_type="application/yaml")


VIEWS = (Recommend, Similar, Search, Events, Catalog, Shown, Models, Promote, Rollback, Experiments, StopExperiment,
         OpenAPI)


def add_views(app: faust.App, api: Api) -> None:
    """Register every view of :data:`VIEWS` on ``app``, answering from ``api``; handlers that
    raise :class:`HTTPProblem` answer it as a JSON error."""
    for view in VIEWS:
        bound = type(view.__name__, (view,), {"api": api, "__doc__": view.__doc__})
        for method in ("get", "post"):
            handler = view.__dict__.get(method)
            if handler is not None:
                setattr(bound, method, _answering_problems(handler, view.path))
        app.page(view.path)(bound)


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
