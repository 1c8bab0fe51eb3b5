"""``transformer serve``: the model behind HTTP, for clients of LibreTranslate's and OpenNMT-py's APIs and a web page.

- ``app.create_app(load, settings)``: the FastAPI app (routes, errors as JSON, model loading at start-up);
- ``service.Service``: readiness, limits, translation and attention; ``service.ServeSettings``: the knobs;
- ``batcher.Batcher``: the queue and the worker thread that decodes concurrent requests together;
- ``api``: the request and answer shapes of the three APIs; ``bodies``: reading JSON, form and query fields;
- ``metrics``: the Prometheus metrics, in a registry of the app's own.

Needs the optional extra: ``pip install -e ".[serve]"`` (FastAPI, uvicorn, prometheus-client, httpx); importing
this package imports FastAPI.
"""

from transformer.serving.app import create_app
from transformer.serving.batcher import BatchLimits
from transformer.serving.service import ServeSettings

__all__ = ["BatchLimits", "ServeSettings", "create_app"]
