"""Composition root of the operator console: its settings -> the suite's clients -> the pages (FastAPI routes,
server-rendered Jinja2 templates with autoescaping: item text is untrusted)."""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path
from typing import Annotated
from urllib.parse import quote, urlencode

import jinja2
from fastapi import FastAPI, Query, Request, Response
from fastapi.responses import HTMLResponse, PlainTextResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from recsys_client import (
    AsyncOperatorClient,
    AsyncRecsysClient,
    InvalidArgumentError,
    NotFoundError,
    RecsysError,
    UnauthenticatedError,
    UnavailableError,
)
from services.console.config import ConsoleSettings
from services.console.views import Console, RecommendOptions
from services.gateway.experiments import Experiments

TEMPLATES = Path(__file__).with_name("templates")
STATUS_BY_ERROR: dict[type[RecsysError], int] = {
    InvalidArgumentError: 400,
    NotFoundError: 404,
    UnauthenticatedError: 502,
    UnavailableError: 503,
}


def templates() -> Jinja2Templates:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined
    )
    return Jinja2Templates(env=environment)


def authorized(header: str, token: str) -> bool:
    """The request carries the token: `Bearer <token>`, or HTTP Basic with the token as password (what a
    browser sends after its login prompt)."""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer":
        return hmac.compare_digest(credentials.encode(), token.encode())
    if scheme.lower() == "basic":
        try:
            _, _, password = base64.b64decode(credentials, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return hmac.compare_digest(password.encode(), token.encode())
    return False


def load_experiments(path: Path | None) -> Experiments:
    """The gateway's experiments file, read as the gateway reads it. No file at the path reads as no experiments:
    deploy/components/console mounts it from a ConfigMap that exists only where experiments run."""
    if path is not None and not path.exists():
        return Experiments()
    return Experiments.from_file(path)


def build_app(settings: ConsoleSettings) -> FastAPI:
    token = (settings.auth_token.get_secret_value() if settings.auth_token is not None else "") or None
    addresses = {
        name: address
        for name, address in (
            ("gateway", settings.gateway_address),
            ("preprocessor", settings.preprocessor_address),
            ("embedding", settings.embedding_address),
            ("retriever", settings.retriever_address),
            ("ranker", settings.ranker_address),
        )
        if address
    }
    experiments = load_experiments(settings.experiments_file)

    @asynccontextmanager
    async def open_console() -> AsyncIterator[Console]:
        # gRPC's asyncio channels belong to the server's event loop, so they are opened once it runs.
        async with (
            AsyncRecsysClient(
                settings.gateway_address, token=token, tls=settings.tls, deadline=settings.deadline_s
            ) as gateway,
            AsyncOperatorClient(
                settings.retriever_address,
                ranker_address=settings.ranker_address or None,
                token=token,
                tls=settings.tls,
                deadline=settings.deadline_s,
            ) as operator,
        ):
            yield Console(gateway, operator, addresses, settings.catalogs, experiments, settings.impression_scan_limit)

    return console_app(open_console, token)


def console_app(open_console: Callable[[], AbstractAsyncContextManager[Console]], token: str | None) -> FastAPI:
    """The console's routes over the Console that `open_console` yields while the app runs; `token`, when set, is
    asked of every request but /healthz."""
    pages = templates()
    console: Console | None = None

    def current() -> Console:
        if console is None:
            raise RuntimeError("the console is used outside its app's lifespan")
        return console

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        nonlocal console
        async with open_console() as opened:
            console = opened
            yield

    app = FastAPI(title="recsys console", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.middleware("http")
    async def require_token(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if token is None or request.url.path == "/healthz":
            return await call_next(request)
        if authorized(request.headers.get("authorization", ""), token):
            return await call_next(request)
        return PlainTextResponse(
            "the console needs the gateway's token: log in with any user name and the token as password, or "
            "send `authorization: Bearer <token>`",
            status_code=401,
            headers={"WWW-Authenticate": 'Basic realm="recsys console"'},
        )

    @app.exception_handler(RecsysError)
    async def suite_error(request: Request, error: RecsysError) -> HTMLResponse:
        status = STATUS_BY_ERROR.get(type(error), 502)
        return pages.TemplateResponse(request, "error.html", {"error": error, "catalogs": current().catalogs}, status)

    @app.get("/healthz", response_class=PlainTextResponse)
    async def healthz() -> str:
        return "ok"

    @app.get("/")
    async def home(user: str = "", item: str = "", catalog: str = "") -> RedirectResponse:
        suffix = f"?{urlencode({'catalog': catalog})}" if catalog else ""
        if user:
            return RedirectResponse(
                app.url_path_for("user_page", user_id=quote(user, safe="")) + suffix, status_code=303
            )
        if item:
            return RedirectResponse(
                app.url_path_for("item_page", item_id=quote(item, safe="")) + suffix, status_code=303
            )
        return RedirectResponse(app.url_path_for("suite_page"), status_code=303)

    @app.get("/users/{user_id:path}", response_class=HTMLResponse)
    async def user_page(
        request: Request,
        user_id: str,
        catalog: str = "",
        q: str = "",
        k: Annotated[int, Query(ge=1, le=100)] = 10,
        category: str = "",
        diversity: Annotated[float, Query(ge=0.0, le=1.0)] = 0.0,
        boost_category: str = "",
        boost_weight: Annotated[float, Query(ge=-10.0, le=10.0)] = 0.0,
        include_seen: bool = False,
    ) -> HTMLResponse:
        options = RecommendOptions(
            query=q,
            k=k,
            categories=[category] if category else [],
            diversity=diversity,
            boost_category=boost_category,
            boost_weight=boost_weight,
            exclude_seen=not include_seen,
        )
        page = await current().user(user_id, catalog, options)
        return pages.TemplateResponse(request, "user.html", {"page": page, "catalogs": current().catalogs})

    @app.get("/items/{item_id:path}", response_class=HTMLResponse)
    async def item_page(request: Request, item_id: str, catalog: str = "") -> HTMLResponse:
        page = await current().item(item_id, catalog)
        return pages.TemplateResponse(request, "item.html", {"page": page, "catalogs": current().catalogs})

    @app.get("/experiments", response_class=HTMLResponse)
    async def experiments_page(request: Request, name: str = "", catalog: str = "") -> HTMLResponse:
        page = await current().experiments(name, catalog)
        return pages.TemplateResponse(request, "experiments.html", {"page": page, "catalogs": current().catalogs})

    @app.get("/suite", response_class=HTMLResponse)
    async def suite_page(request: Request) -> HTMLResponse:
        page = await current().suite()
        return pages.TemplateResponse(request, "suite.html", {"page": page, "catalogs": current().catalogs})

    return app
