"""``python -m sagaflow run module[:app]``: serves the handlers of an
:class:`~sagaflow.App` defined in a module (a dotted name importable from the
current directory, or a path to a ``.py`` file), until SIGTERM or SIGINT."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from typing import List, Optional

from .app import App


def load_app(target: str) -> App:
    """The :class:`App` named by ``module[:attribute]`` (default ``app``)."""
    module_name, _, attribute = target.partition(":")
    attribute = attribute or "app"
    if module_name.endswith(".py") or os.sep in module_name:
        spec = importlib.util.spec_from_file_location("__sagaflow_app__", module_name)
        if spec is None or spec.loader is None:
            raise SystemExit(f"cannot load {module_name}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path:
            sys.path.insert(0, os.getcwd())
        module = importlib.import_module(module_name)
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise SystemExit(f"{module_name} has no sagaflow.App named `{attribute}`")
    return app


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sagaflow", description="sagaflow command handlers")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve the handlers of an App until SIGTERM or SIGINT")
    run.add_argument("target", metavar="module[:app]", help="where the App is (attribute `app` by default)")
    run.add_argument("--redis-url", help="the daemon's Redis (default: SAGAFLOW_REDIS_URL, else the App's)")
    run.add_argument(
        "--redis-mode",
        choices=["auto", "single", "cluster"],
        help="one Redis or a Redis Cluster (default: SAGAFLOW_REDIS_MODE, else the App's, else auto: ask CLUSTER INFO)",
    )
    run.add_argument("--group", help="the consumer group, instead of the App's")
    run.add_argument("--reply-stream-prefix", help="the daemon's reply_stream_prefix (default saga:replies:)")
    run.add_argument("--max-in-flight", type=int, help="commands handled at once (default 1024)")
    run.add_argument("--log-level", default=os.environ.get("SAGAFLOW_LOG", "INFO"), help="default INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    app = load_app(args.target)
    if args.redis_url:
        app.redis = args.redis_url
    elif app.redis is None and os.environ.get("SAGAFLOW_REDIS_URL"):
        app.redis = os.environ["SAGAFLOW_REDIS_URL"]
    if args.redis_mode:
        app.redis_mode = args.redis_mode
    elif app.redis_mode is None and os.environ.get("SAGAFLOW_REDIS_MODE"):
        app.redis_mode = os.environ["SAGAFLOW_REDIS_MODE"]
    if args.group:
        app.group = args.group
    if args.reply_stream_prefix:
        app.reply_stream_prefix = args.reply_stream_prefix
    if args.max_in_flight:
        app.max_in_flight = max(1, args.max_in_flight)
    app.run()


if __name__ == "__main__":
    main()
