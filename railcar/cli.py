"""The ``railcar`` command: ``serve``, ``consume``, ``scan``, ``demo``, ``report``, ``inject``.

Every command takes ``--config PATH`` (TOML; also ``RAILCAR_CONFIG``) and every setting can come from
``RAILCAR_<SECTION>_<KEY>``; ``railcar serve --help`` lists them all. Exit codes: 0 success, 1 findings (``scan``)
or a runtime failure, 2 a usage or configuration error: every bad setting is checked when the config loads, and
each is printed on its own line naming its key and its environment variable.
Each command's implementation lives in its room and is imported only when that command runs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from railcar.core.config import ConfigError
from railcar.settings import RailcarConfig, describe_options, load_config

# command -> (module, function, one-line help). The function takes (args, config) and returns an exit code.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "serve": ("railcar.commands.serve", "main", "Run the sidecar proxy (OpenAI-compatible, guarded)."),
    "consume": ("railcar.commands.consume", "main", "Run the security consumer group on the trace topic."),
    "scan": ("railcar.commands.scan", "main", "Scan telemetry files offline and write the security fileset."),
    "demo": ("railcar.commands.demo", "main", "Run the whole job on recorded traffic with an embedded broker."),
    "report": ("railcar.tools.report", "main", "Render the security fileset as one HTML page."),
    "inject": ("railcar.webhook", "main", "Serve the Kubernetes admission webhook that injects the sidecar."),
}


def _add_command_args(name: str, p: argparse.ArgumentParser) -> None:
    if name == "scan":
        p.add_argument("paths", nargs="+", metavar="PATH", help="files or directories (JSONL, OTLP JSON, text; .gz ok)")
        p.add_argument("--fileset-root", help="directory holding nemo-agent-security/ (default: [fileset] root)")
        p.add_argument("--format", choices=("table", "jsonl"), default="table",
                       help="jsonl: also print one finding per line on stdout")
        p.add_argument("--max-bytes", type=int, default=1_000_000_000,
                       help="stop after this many bytes, most recent files first (default 1 GB)")
        p.add_argument("--no-progress", action="store_true", help="no progress bar")
        p.add_argument("--deep", action="store_true",
                       help="also run the deep rules library (Kingfisher, offline) over what the catalog did not claim")
    elif name == "demo":
        p.add_argument("--out", default="./railcar-demo", help="directory for the fileset and report.html")
        p.add_argument("--sessions", type=int, default=0, help="limit recorded sessions (0: all)")
        p.add_argument("--recorded", default="", help="recorded chat_completions.jsonl (default: the bundled sample)")
    elif name == "report":
        p.add_argument("--fileset-root", required=True, help="directory holding nemo-agent-security/")
        p.add_argument("--out", required=True, help="HTML file to write")
    elif name == "inject":
        p.add_argument("--host", default="0.0.0.0", help="address of the webhook (in-cluster Service reaches it)")
        p.add_argument("--port", type=int, default=8443, help="HTTPS port of the webhook")
        p.add_argument("--tls-cert", default="/etc/railcar/tls/tls.crt", help="certificate (PEM)")
        p.add_argument("--tls-key", default="/etc/railcar/tls/tls.key", help="private key (PEM)")
        p.add_argument("--sidecar-template", default="", help="JSON/YAML file with the sidecar container to inject")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="railcar", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    epilog = "Settings (TOML key = default  [environment variable]):\n" + describe_options()  # once, not per command
    for name, (_, _, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        p.add_argument("--config", metavar="PATH", help="railcar.toml (also RAILCAR_CONFIG)")
        _add_command_args(name, p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``railcar`` console script; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return _config_error(args.command, exc)
    module, func, _ = COMMANDS[args.command]
    entry: Callable[[argparse.Namespace, RailcarConfig], int] = getattr(importlib.import_module(module), func)
    try:
        return int(entry(args, config) or 0)
    except ConfigError as exc:
        return _config_error(args.command, exc)
    except KeyboardInterrupt:
        return 130


def _config_error(command: str, exc: ConfigError) -> int:
    """Print every error of ``exc`` on stderr, one line each; returns exit code 2."""
    for error in exc.errors or [str(exc)]:
        print(f"railcar {command}: configuration error: {error}", file=sys.stderr)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
