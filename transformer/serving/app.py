"""The FastAPI app of ``transformer serve``: its routes, its error answers, and the model loading at start-up.

Routes: ``POST /translate`` and ``GET /languages`` (LibreTranslate's API; a multilingual model's direction is
chosen by ``source`` and ``target``), ``POST /translator/translate`` (OpenNMT-py's: the model's first direction),
``POST /attention`` (ours, for the web page), ``GET /health`` (200 once the model is loaded,
503 before and while stopping), ``GET /metrics`` (Prometheus), ``GET /`` (the page, ``static/index.html``) and
``GET /static/...`` (its files). The shapes are in ``api``; the work is done by ``service.Service``.

Errors are JSON, ``{"error": "..."}`` as LibreTranslate answers them, never a traceback: 400 a bad request
(the message names the field), 404/405 an unknown route or method, 413 over --char-limit, --batch-limit or
the body size those allow, 503 not ready, queue full or stopping (with Retry-After), 504 over --timeout, 500 a
batch that failed (with the reason) or a bug (logged with its traceback, answered without it).

The model loads in a thread after the server has started, so that ``/health`` can answer 503 meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from transformer.config import DataConfig
from transformer.serving.api import (
    attention_answer,
    languages,
    libretranslate_answer,
    opennmt_answer,
    parse_attention,
    parse_libretranslate,
    parse_opennmt,
)
from transformer.serving.bodies import RequestError, read_fields, read_json
from transformer.serving.metrics import Metrics, MetricsMiddleware
from transformer.serving.service import Loader, ServeSettings, Service

STATIC = Path(__file__).resolve().parent / "static"
ROUTES = ("/", "/translate", "/languages", "/translator/translate", "/attention", "/health", "/metrics")


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(
                413, f"Invalid request: the body has more than {limit} bytes (see --char-limit and --batch-limit)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(
    load: Loader,
    settings: ServeSettings | None = None,
    *,
    on_load_error: Callable[[BaseException], None] | None = None,
) -> FastAPI:
    """The app; ``load()`` -> (translator, config) runs in a thread once the server starts.

    Args:
        load: e.g. ``lambda: load_translator("torch", checkpoints=[...])``.
        on_load_error: called with the exception if ``load`` fails (the command line then stops the server).

    ``app.state.service`` is the ``Service`` (``stop_accepting()`` on SIGTERM).
    """
    settings = settings or ServeSettings()
    metrics = Metrics(ROUTES)
    service = Service(load, settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loading = asyncio.create_task(service.start(on_load_error))
        try:
            yield
        finally:
            service.stop_accepting()
            await loading  # a model still loading finishes first, so that its batcher is stopped too
            await asyncio.to_thread(service.close)

    app = FastAPI(title="transformer serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.add_middleware(MetricsMiddleware, metrics=metrics)
    add_error_handlers(app)
    add_translation_routes(app, service)
    add_service_routes(app, service)
    app.mount("/static", StaticFiles(directory=STATIC, check_dir=False), name="static")
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error as ``{"error": message}``: ours, Starlette's (404, 405), and bugs (500, traceback logged only)."""

    @app.exception_handler(RequestError)
    async def request_error(request: Request, err: RequestError) -> JSONResponse:
        return error(err.status, err.message, err.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        return error(err.status_code, str(err.detail), getattr(err, "headers", None))

    @app.exception_handler(Exception)  # Starlette raises the exception again after this answer: uvicorn logs it
    async def internal_error(request: Request, err: Exception) -> JSONResponse:
        return error(500, f"internal error ({type(err).__name__}); the server log has the details")


def add_translation_routes(app: FastAPI, service: Service) -> None:
    """LibreTranslate's /translate and /languages, OpenNMT-py's /translator/translate, and /attention."""
    body_limit = service.settings.body_limit()

    def data() -> DataConfig:
        service.admit()
        assert service.config is not None
        return service.config.data

    @app.post("/translate")
    async def translate(request: Request) -> JSONResponse:
        model_data = data()
        body = await read_body(request, body_limit)
        fields = read_fields(body, request.headers.get("content-type", ""), request.scope.get("query_string", b""))
        parsed = parse_libretranslate(fields, model_data)
        service.check_limits(parsed.texts, "q", is_list=parsed.is_list)
        n_best = min(1 + parsed.alternatives, service.max_n_best())  # as many alternatives as the beam has
        results = await service.translate(parsed.texts, n_best, parsed.direction)
        return JSONResponse(libretranslate_answer(service.translator.tokenizer, parsed, results))

    @app.get("/languages")
    async def list_languages() -> JSONResponse:
        return JSONResponse(languages(data().direction_pairs))

    @app.post("/translator/translate")
    async def opennmt(request: Request) -> JSONResponse:
        service.admit()
        texts = parse_opennmt(read_json(await read_body(request, body_limit)))
        service.check_limits(texts, "src")
        results = await service.translate(texts, 1, service.first_direction())  # the API names no language
        return JSONResponse(opennmt_answer(service.translator.tokenizer, texts, results))

    @app.post("/attention")
    async def attention(request: Request) -> JSONResponse:
        model_data = data()
        parsed = parse_attention(read_json(await read_body(request, body_limit)), model_data)
        nbest, found, alignment = await service.attention(parsed)
        return JSONResponse(attention_answer(service.translator.tokenizer, nbest, found, alignment))



def add_service_routes(app: FastAPI, service: Service) -> None:
    """/health, /metrics and the page at /."""

    @app.get("/health")
    async def health() -> JSONResponse:
        if service.status == "ready":
            return JSONResponse({"status": "ok"})
        body = {"status": service.status} | ({"error": service.error} if service.error else {})
        return JSONResponse(body, status_code=503, headers={"Retry-After": str(service.settings.retry_after)})

    @app.get("/metrics")
    async def metrics_page() -> Response:
        content, media_type = service.metrics.text()
        return Response(content, media_type=media_type)

    @app.get("/")
    async def index() -> Response:
        page = STATIC / "index.html"
        if not page.is_file():
            return error(404, "no web page installed (transformer/serving/static/index.html)")
        return FileResponse(page)
