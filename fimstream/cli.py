"""The `fimstream` command: run the pipeline, check it, query it, manage rules, benchmark."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fimstream.config import Settings, load_settings
from fimstream.service import STAGES


def _common(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("settings (override FIMSTREAM_* variables and the config file)")
    g.add_argument("--config", help="YAML settings file (default: $FIMSTREAM_CONFIG)")
    g.add_argument("--state-dir", type=Path, help="where logs, heartbeats and the embedded store live")
    g.add_argument("--kafka", dest="kafka_bootstrap", help="Kafka bootstrap servers, host:port[,host:port]")
    g.add_argument("--clickhouse-url", help="ClickHouse server, e.g. http://user:pass@host:8123/db "
                                            "(default: embedded chDB under the state directory)")
    g.add_argument("--rules", type=Path, help="rule file or directory")
    g.add_argument("--log-level", default="INFO")


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(args.config, kafka_bootstrap=args.kafka_bootstrap, state_dir=args.state_dir,
                         clickhouse_url=args.clickhouse_url, rules=args.rules)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fimstream", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("up", help="run the whole pipeline locally (embedded broker + store), in the foreground")
    _common(p)
    p.add_argument("--external-kafka", action="store_true",
                   help="use the configured Kafka instead of starting the embedded broker")
    p.set_defaults(func=lambda a: __import__("fimstream.supervisor", fromlist=["up"]).up(
        settings_from(a), external_kafka=a.external_kafka))

    p = sub.add_parser("status", help="exit 0 when every stage runs and the pipeline flows")
    _common(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=lambda a: __import__("fimstream.status", fromlist=["main"]).main(
        settings_from(a).state_dir, a.json))

    for stage in STAGES:
        sp = sub.add_parser(stage, help=f"the {stage} stage").add_subparsers(dest="action", required=True)
        p = sp.add_parser("run", help=f"run the {stage} in the foreground")
        _common(p)
        p.set_defaults(func=lambda a, stage=stage: __import__("fimstream.service", fromlist=["main"]).main(
            stage, settings_from(a), a.log_level))

    p = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (Tansu) in the foreground")
    _common(p)
    p.set_defaults(func=_run_broker)

    p = sub.add_parser("bench", help="run a benchmark from bench/ (collector, pipeline, rules, k8s, sink, "
                                     "enforce) and print its figures; arguments after the name go to it")
    p.add_argument("name")
    p.add_argument("args", nargs=argparse.REMAINDER)
    p.set_defaults(func=_run_bench)

    from fimstream.cli_store import add_subparsers as add_store_commands
    from fimstream.rules.cli import add_subparsers as add_rules_commands
    add_store_commands(sub, _common, settings_from)
    add_rules_commands(sub)
    return parser


def _run_bench(args: argparse.Namespace) -> int:
    """bench/bench_<name>.py of the source tree (benchmarks are not part of the installed package)."""
    import importlib.util

    bench_dir = Path(__file__).resolve().parents[1] / "bench"
    path = bench_dir / f"bench_{args.name}.py"
    if not path.exists():
        names = sorted(p.stem[len("bench_"):] for p in bench_dir.glob("bench_*.py"))
        print(f"no benchmark '{args.name}' in {bench_dir}; available: {', '.join(names) or 'none'}", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location(f"fimstream_bench_{args.name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(bench_dir))
    spec.loader.exec_module(module)
    sys.argv = [str(path), *args.args]  # each benchmark parses its own arguments
    return module.main() or 0


def _run_broker(args: argparse.Namespace) -> int:
    import signal
    import threading

    from fimstream.broker import EmbeddedBroker

    settings = settings_from(args)
    host, _, port = settings.kafka_bootstrap.rpartition(":")
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    with EmbeddedBroker(port=int(port), host=host or "127.0.0.1") as b:
        print(f"Tansu listening on {b.bootstrap}", flush=True)
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, ConnectionError) as e:
        print(f"fimstream: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
