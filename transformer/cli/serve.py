"""Serve translations over HTTP: a trained checkpoint (or several, as an ensemble), or its CTranslate2 export.

The APIs: LibreTranslate's (``POST /translate``, ``GET /languages``), OpenNMT-py's (``POST
/translator/translate``), ``POST /attention`` (for the web page at ``/``), ``GET /health`` and ``GET /metrics``
(Prometheus). A translation is exactly what ``transformer translate`` prints with the same settings; decoding
settings default to the (first) checkpoint's. A multilingual model serves each of its directions:
LibreTranslate's ``source`` and ``target`` choose one (``GET /languages`` lists them), OpenNMT-py's API, which names
no language, gets the first. Concurrent requests are decoded together: a batch closes at
--max-batch-sentences or --max-batch-tokens, or when its oldest sentence has waited --max-wait-ms
(--max-batch-sentences 1 turns batching off). SIGTERM or Ctrl-C: new requests are refused, those taken are
answered (for up to --drain-seconds), and the command exits with status 0. Mistakes (a bad checkpoint, a port
in use) end with one line on stderr and exit status 2. Needs the optional extra: pip install -e ".[serve]".
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import socket
from collections.abc import Iterator

from transformer.cli.options import add_decode_arguments, add_device_argument, add_engine_arguments
from transformer.config import ConfigError
from transformer.device import resolve_device
from transformer.errors import UserError, os_reason, require_extra
from transformer.inference import load_translator

logger = logging.getLogger(__name__)

EXAMPLES = """\
examples:
  transformer serve --checkpoint runs/sample/checkpoints/best.pt             # http://127.0.0.1:5000
  curl -s http://127.0.0.1:5000/translate -H 'Content-Type: application/json' \\
       -d '{"q": "A dog is running on the beach.", "source": "en", "target": "de"}'
  transformer serve --checkpoint a/avg10.pt --checkpoint b/avg10.pt --port 8080   # an ensemble
  transformer serve --engine ctranslate2 --model ct2 --host 0.0.0.0           # a `transformer export` folder
  transformer serve --checkpoint best.pt --max-batch-sentences 1              # batching off
"""

POSITIVE = ("port", "max_batch_tokens", "max_batch_sentences", "max_queue", "char_limit", "batch_limit")


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "serve", help="serve translations over HTTP (LibreTranslate's and OpenNMT-py's APIs, a web page)",
        description=__doc__.split("\n\n")[0], epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_engine_arguments(
        parser, checkpoint_help="a .pt file written by training; repeat it to decode several models as an ensemble"
    )
    add_decode_arguments(parser)
    parser.add_argument("--max-src-tokens", type=int, help="truncate longer inputs, with a warning")
    add_device_argument(parser)
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    server.add_argument("--port", type=int, default=5000, help="port to listen on (default 5000)")
    server.add_argument("--max-batch-tokens", type=int, default=4096, metavar="N",
                        help="source tokens per decoded batch (default 4096)")
    server.add_argument("--max-batch-sentences", type=int, default=64, metavar="N",
                        help="sentences per decoded batch; 1 turns batching off (default 64)")
    server.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                        help="how long a sentence waits for others to batch with (default 5)")
    server.add_argument("--max-queue", type=int, default=1024, metavar="N",
                        help="sentences that may wait; more: 503 with Retry-After (default 1024)")
    server.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="seconds a request may take, queue included; more: 504 (default 60)")
    server.add_argument("--char-limit", type=int, default=5000, metavar="N",
                        help="characters per text; more: 413 (default 5000)")
    server.add_argument("--batch-limit", type=int, default=128, metavar="N",
                        help="texts per request; more: 413 (default 128)")
    server.add_argument("--drain-seconds", type=float, default=30.0, metavar="S",
                        help="on SIGTERM or Ctrl-C, how long requests in flight may still take (default 30)")
    parser.set_defaults(run=run)
    return parser


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket bound to (host, port), so that a port in use is one error line before anything loads."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP: only then does asyncio set TCP_NODELAY (else each answer on a kept connection waits 40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {os_reason(err)}") from None
    return sock


def check_options(args: argparse.Namespace) -> None:
    for name in POSITIVE:
        if getattr(args, name) < (0 if name == "port" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    for name in ("max_wait_ms", "drain_seconds"):
        if getattr(args, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(args, name)}")
    if args.timeout <= 0:
        raise ConfigError(f"--timeout must be > 0, got {args.timeout}")
    if args.max_src_tokens is not None and args.max_src_tokens < 2:
        raise ConfigError("--max-src-tokens must be at least 2 (one token and EOS)")


def run(args: argparse.Namespace) -> int:
    check_options(args)
    for module in ("fastapi", "uvicorn", "prometheus_client"):
        require_extra(module, "serve", "transformer serve")
    import uvicorn

    from transformer.serving import BatchLimits, ServeSettings, create_app

    settings = ServeSettings(
        limits=BatchLimits(max_tokens=args.max_batch_tokens, max_sentences=args.max_batch_sentences,
                           max_wait_ms=args.max_wait_ms, max_queue=args.max_queue),
        timeout=args.timeout, char_limit=args.char_limit, batch_limit=args.batch_limit,
        max_src_tokens=args.max_src_tokens, beam_size=args.beam_size, length_penalty=args.length_penalty,
        batch_size=args.batch_size,
    )
    device = resolve_device(args.device)

    def load():
        return load_translator(
            args.engine, checkpoints=args.checkpoint or (), model_dir=args.model, device=device,
            inter_threads=args.inter_threads, intra_threads=args.intra_threads,
        )

    failures: list[BaseException] = []

    def on_load_error(err: BaseException) -> None:
        failures.append(err)
        server.should_exit = True

    app = create_app(load, settings, on_load_error=on_load_error)
    sock = listening_socket(args.host, args.port)
    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", timeout_graceful_shutdown=args.drain_seconds,
    )
    server = uvicorn.Server(config)
    uvicorn_exit = server.handle_exit

    def handle_exit(sig, frame) -> None:  # SIGTERM or Ctrl-C: refuse new requests at once, then uvicorn drains
        app.state.service.stop_accepting()
        uvicorn_exit(sig, frame)

    server.handle_exit = handle_exit
    logger.info("serving on http://%s:%d (the model loads; GET /health answers 200 once it is ready)", host, port)
    with signals_end_quietly():
        server.run(sockets=[sock])
    if failures:
        raise failures[0]
    logger.info("stopped")
    return 0


@contextlib.contextmanager
def signals_end_quietly() -> Iterator[None]:
    """While serving, SIGTERM and SIGINT go to uvicorn's handlers; uvicorn raises them again once it has shut
    down, and here they then do nothing, so that a graceful stop exits with status 0 (not 143 or 130)."""
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
