"""`trainspect ui`: serve the live dashboard over the runs directory."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from trainspect.cli import add_dir_argument
    from trainspect.dashboard.server import DEFAULT_HOST, DEFAULT_PORT

    parser = sub.add_parser("ui", help="serve the live dashboard")
    add_dir_argument(parser)
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to bind (default {DEFAULT_HOST}; any other address "
                             "requires a token, printed in the URL)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default {DEFAULT_PORT}; 0 picks a free one)")
    parser.add_argument("--token", default=None,
                        help="token to require (default: generated when not on 127.0.0.1)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from trainspect.dashboard.server import start

    server = start(args.dir, host=args.host, port=args.port, token=args.token)
    print(f"trainspect dashboard: {server.url}", flush=True)
    if server.token:
        print("  (anyone with this URL can read your runs; share it with care)", flush=True)
    print("  Ctrl-C to stop", flush=True)
    try:
        server.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()
    return 0
