"""The HTTP service (FastAPI): recommendations, similar items, new items, and a web page.

Endpoints (ids are strings; every error is ``{"error": message}`` with its status code):

* ``GET /health``; ``GET /`` (the page); ``GET /users?prefix=&limit=`` (user ids, for the page);
* ``GET /users/{user}/recommendations?k=20&exclude_seen=true``; ``GET /users/{user}/items``;
* ``POST /recommendations`` ``{"items": [...], "k": 20}`` (an anonymous basket);
* ``GET /items/{item}/similar?k=10``; ``POST /items`` ``{"item": id, "features": {modality: [...]}}``.

404 unknown user/item, 422 bad ``k``/body/features (naming the field or modality), 409 existing item,
413 body over 1 MB. Bodies are read in chunks and refused as soon as they pass the limit.
"""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, Response

from latticerec.serve.page import PAGE
from latticerec.serve.service import BadInput, Conflict, NotFound, Recommender

MAX_BODY = 1 << 20
INLINE_WORK = 1 << 22  # catalogues of at most this many numbers are scored on the event loop
MAX_LIST = 1000  # user ids listed by one GET /users (the page asks for 100)
INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
log = logging.getLogger("latticerec.serve")


class TooLarge(Exception):
    pass


def _json(obj, status: int = 200) -> Response:
    return Response(json.dumps(obj, separators=(",", ":")), status_code=status,
                    media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


async def read_json(request: Request, limit: int = MAX_BODY, fields: tuple[str, ...] | None = None) -> dict:
    """The request body as a JSON object (keys among ``fields`` when given, none twice); TooLarge past
    ``limit`` bytes, BadInput otherwise."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge
        chunks.append(chunk)
    try:
        body = json.loads(b"".join(chunks), object_pairs_hook=_unique_keys)
    except BadInput:
        raise
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, a 5000-digit
        raise BadInput(f"body: not valid JSON ({exc})") from None  # integer, [[[[... nested too deep
    if not isinstance(body, dict):
        raise BadInput("body: expected a JSON object")
    if fields is not None:
        unknown = sorted(set(body) - set(fields))
        if unknown:
            raise BadInput(f"body: unknown field {unknown[0]!r} (expected {', '.join(fields)})")
    return body


def _unique_keys(pairs: list) -> dict:
    """A JSON object whose keys are all different (``{"k": 5, "k": 50}`` is refused, not guessed)."""
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set = set()
        twice = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise BadInput(f"body: field {twice!r} given twice")
    return out


def check_query(request: Request, allowed: tuple[str, ...]) -> None:
    """Only the endpoint's query parameters, each at most once: an unknown one (a misspelt
    ``exclude_seen``, or ``k`` sent in the query of a POST) or a repeated one is refused, not ignored."""
    names = [name for name, _ in request.query_params.multi_items()]
    for name in names:
        if name not in allowed:
            expected = f"expected {', '.join(allowed)}" if allowed else "it takes none"
            raise BadInput(f"{name}: unknown query parameter ({expected})")
    if len(set(names)) != len(names):
        twice = next(n for i, n in enumerate(names) if n in names[:i])
        raise BadInput(f"{twice}: query parameter given more than once")


def _query_int(request: Request, name: str, default: int, high: int) -> int:
    """An integer query parameter in ``1..high``."""
    raw = request.query_params.get(name)
    if raw is None:
        return min(default, high)  # the default never exceeds --max-k
    if not (raw.isascii() and INTEGER.fullmatch(raw)):  # int() would take '1_0', ' 3' and '٣'
        raise BadInput(f"{name}: expected an integer in 1..{high}, got {raw[:40]!r}")
    value = int(raw)
    if not 1 <= value <= high:
        raise BadInput(f"{name}: must be in 1..{high}, got {value}")
    return value


def _query_bool(request: Request, name: str, default: bool) -> bool:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if raw.lower() in ("true", "1", "yes"):
        return True
    if raw.lower() in ("false", "0", "no"):
        return False
    raise BadInput(f"{name}: expected true or false, got {raw!r}")


def create_app(rec: Recommender) -> FastAPI:
    """The FastAPI application serving ``rec``."""
    app = FastAPI(title="latticerec", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.recommender = rec

    async def work(fn, *args):
        """Score on the event loop when the catalogue is small (a thread hop costs more than the
        product), else in the thread pool, so one long product never stalls the other requests."""
        if rec.work_size() <= INLINE_WORK:
            return fn(*args)
        return await run_in_threadpool(fn, *args)

    @app.exception_handler(NotFound)
    async def _404(request, exc):
        return _error(404, str(exc))

    @app.exception_handler(BadInput)
    async def _422(request, exc):
        return _error(422, str(exc))

    @app.exception_handler(Conflict)
    async def _409(request, exc):
        return _error(409, str(exc))

    @app.exception_handler(TooLarge)
    async def _413(request, exc):
        return _error(413, f"body: larger than {MAX_BODY} bytes")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, f"{where}: {first.get('msg', 'invalid request')}")

    @app.exception_handler(HTTPException)
    async def _http(request, exc):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request, exc):  # a bug, never bad input: logged with its traceback
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__})")

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return HTMLResponse(PAGE)

    @app.get("/health")
    async def health():
        return _json(rec.health())

    @app.get("/users")
    async def users(request: Request):
        check_query(request, ("prefix", "limit"))
        prefix = request.query_params.get("prefix", "")
        limit = _query_int(request, "limit", 50, MAX_LIST)  # a listing, not a top-k: not --max-k
        out = [u for u in rec.art.user_ids if u.startswith(prefix)][:limit] if prefix else \
            rec.art.user_ids[:limit]
        return _json({"users": out})

    async def user_recs(request: Request):
        user = request.path_params["user"]
        check_query(request, ("k", "exclude_seen"))
        k = _query_int(request, "k", 20, rec.max_k)
        items = await work(rec.recommend_user, user, k, _query_bool(request, "exclude_seen", True))
        return _json({"user": user, "items": items})

    # the hot path as a plain Starlette route: no parameter models to solve per request
    app.router.add_route("/users/{user}/recommendations", user_recs, methods=["GET"])

    @app.get("/users/{user}/items")
    async def user_items(user: str, request: Request):
        check_query(request, ())
        return _json({"user": user, "items": rec.user_items(user)})

    @app.post("/recommendations")
    async def basket(request: Request):
        check_query(request, ())
        body = await read_json(request, fields=("items", "k"))
        items = await work(rec.recommend_basket, body.get("items"), body.get("k", min(20, rec.max_k)))
        return _json({"user": None, "items": items})

    @app.get("/items/{item}/similar")
    async def similar(item: str, request: Request):
        check_query(request, ("k",))
        items = await work(rec.similar, item, _query_int(request, "k", 10, rec.max_k))
        return _json({"item": item, "items": items})

    @app.post("/items")
    async def add_item(request: Request):
        check_query(request, ())
        body = await read_json(request, fields=("item", "features"))
        out = await run_in_threadpool(rec.add_item, body.get("item"), body.get("features"))
        return _json(out, 201)

    return app

