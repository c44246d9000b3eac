"""`featvis serve MODEL [--images SOURCE] [--port 8000] [--host 127.0.0.1] [--cache DIR] [--workers N]`:
a local web app to browse a model's layers and units, render on demand, and explain photos
(see featvis.serve). Needs the ``serve`` extra: ``pip install "featvis[serve]"``."""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import socket
import sys
from pathlib import Path

from .._util.errors import FeatvisError, Terminated
from .common import add_model_args, add_render_args, model_from_args, positive_int, render_settings


def add_parser(subparsers) -> None:
    from ..serve.state import DIVERSITY, DROP_AFTER  # torch-free
    parser = subparsers.add_parser(
        "serve", help="a local web app: layers, units (feature visualization, dataset examples, circuits, receptive "
                      "fields) rendered on demand, and photo explanations",
        description="Serve a model's layers and units on http://HOST:PORT/: every unit's feature visualization "
                    "(positive, negative, diversity) rendered on demand through one batched queue and cached on disk "
                    "(shared with `featvis gallery --out` the same folder), dataset examples from --images, circuits, "
                    "receptive fields, and an upload page that classifies and explains a photo.")
    add_model_args(parser)
    parser.add_argument("--images", metavar="SOURCE", help="photo collection for dataset examples (a folder or a text file of paths)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: any free port, printed at start)")
    parser.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                        help="also answer requests for this host name (by default only the bound address and loopback "
                             "names: other names are refused, against DNS rebinding); repeatable")
    parser.add_argument("--cache", metavar="DIR", help="picture cache (default $FEATVIS_CACHE_DIR/serve); a gallery folder works")
    parser.add_argument("--workers", type=int, default=2, metavar="N",
                        help="decoding worker processes of the dataset-examples pass (default 2; 0: decode in its process)")
    add_render_args(parser, what="picture")
    parser.add_argument("--batch", type=positive_int, default=16, metavar="N",
                        help="most images the queue renders in one call (default 16); it batches only as far as that "
                             "lowers the mean wait, measured on this device")
    parser.add_argument("--fixed-batch", dest="adaptive", action="store_false",
                        help="always batch up to --batch images, whatever batching costs here")
    parser.add_argument("--window-ms", type=float, default=50.0, metavar="MS",
                        help="how long the queue waits for more requests to batch with the first (default 50)")
    parser.add_argument("--drop-after", type=float, default=DROP_AFTER, metavar="S",
                        help=f"a queued picture no open page asked about for S seconds is dropped (default {DROP_AFTER:g}; "
                             "a page asks four times a second)")
    parser.add_argument("--diversity", type=int, default=DIVERSITY, metavar="N",
                        help=f"a unit's diversity set: N >= 2 pictures that differ in style (default {DIVERSITY}; 0: none)")
    parser.add_argument("--circuits", type=positive_int, default=6, metavar="K", help="connections listed per side (default 6)")
    parser.add_argument("--k", type=positive_int, default=9, help="dataset examples per channel (default 9)")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, metavar="MB", help="largest photo upload (default 20 MB)")
    parser.add_argument("--explain-layer", metavar="L", help="layer a photo is explained at (default mixed4d, else the last spatial layer)")
    parser.add_argument("--explain-steps", type=int, default=0, metavar="N",
                        help="steps of the explanation's icons (default 0: numbers and maps, no icons)")
    parser.add_argument("--explain-groups", type=positive_int, default=4, metavar="K", help="NMF groups of a photo's explanation (default 4)")
    parser.set_defaults(func=run)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got '{text}'") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0..65535, got {value}")
    return value


def _check(args: argparse.Namespace) -> None:
    if args.diversity == 1 or args.diversity < 0:
        raise FeatvisError(f"--diversity needs at least 2 pictures (or 0 for none), got {args.diversity}")
    if args.workers < 0:
        raise FeatvisError(f"--workers must be 0 or more, got {args.workers}")
    if args.explain_steps < 0:
        raise FeatvisError(f"--explain-steps must be 0 (no icons) or more, got {args.explain_steps}")
    if not 0 < args.max_upload_mb <= 1024:
        raise FeatvisError(f"--max-upload-mb takes 0 < MB <= 1024, got {args.max_upload_mb}")
    if not 0 <= args.window_ms <= 10_000:
        raise FeatvisError(f"--window-ms takes 0..10000, got {args.window_ms}")
    if not 1 <= args.drop_after <= 86_400:
        raise FeatvisError(f"--drop-after takes 1..86400 seconds, got {args.drop_after}")
    if args.images is not None and not Path(args.images).exists():
        raise FeatvisError(f"--images {args.images}: no such folder or file; give a folder of photos or a text file of paths")


def _model_args(args: argparse.Namespace) -> list[str]:
    """The model options again, for the `featvis examples` subprocesses."""
    out = [args.model, "--device", args.device]
    for flag, value in (("--weights", args.weights), ("--input-size", args.input_size)):
        if value is not None:
            out += [flag, str(value)]
    for flag, value in (("--mean", args.mean), ("--std", args.std)):
        if value is not None:
            out += [flag, ",".join(repr(float(v)) for v in value)]
    for folder in args.dictionary:
        out += ["--dictionary", folder]
    return out


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound here, so --port 0 can print the port it got)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise FeatvisError(f"--host {host}: cannot resolve it ({exc.strerror}); use e.g. 127.0.0.1") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise FeatvisError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --port") from None
    sock.listen(128)
    return sock


def run(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise FeatvisError('featvis serve needs Starlette and uvicorn: pip install "featvis[serve]"') from None
    from ..models.weights import cache_dir
    from ..serve import ServeOptions, Server

    _check(args)
    settings = render_settings(args)
    cache = Path(args.cache) if args.cache else cache_dir() / "serve"
    sock = _bind(args.host, args.port)
    model = model_from_args(args)
    aux = model_from_args(args)
    if args.explain_layer:
        model.resolve(args.explain_layer)  # an unknown layer fails now
    options = ServeOptions(cache=cache, images=args.images, render=settings, batch=args.batch, window=args.window_ms / 1000,
                           drop_after=args.drop_after, adaptive=args.adaptive,
                           diversity=args.diversity, circuits=args.circuits, k=args.k, workers=args.workers,
                           upload_mb=args.max_upload_mb, explain_layer=args.explain_layer, explain_steps=args.explain_steps,
                           explain_groups=args.explain_groups, model_args=_model_args(args), host=args.host,
                           allow_hosts=args.allow_host)
    server = Server(model, aux, options)
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    if not _loopback(host):
        print(f"featvis serve: warning: listening on {host}, reachable from other machines", file=sys.stderr)
    print(f"featvis serve: {model.name} at http://{shown}:{port}/ (cache {cache})", flush=True)
    config = uvicorn.Config(server.app, log_level="warning", access_log=False, lifespan="off")
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then raises the signal again to the handler it found:
    # SIGINT ends as every command's Ctrl-C (exit 130), SIGTERM as `Terminated` (exit 143). The queued work is
    # dropped, the child processes end, and the process exits at once: its worker threads may be inside torch,
    # and an interpreter torn down under them aborts
    previous = signal.signal(signal.SIGTERM, _terminated)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except (KeyboardInterrupt, Terminated) as exc:
        from . import signal_exit

        server.stop()
        code = signal_exit(exc)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
    return 0


def _terminated(signum, frame) -> None:
    raise Terminated


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
