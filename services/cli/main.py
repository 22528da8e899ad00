"""The `recsys` command: run the suite, train the ranker, load data, fetch MovieLens."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path

from recsys_client import RecsysClient, RecsysError
from services.cli.experiments import run_report
from services.cli.ingest import ingest
from services.cli.progress import heartbeat
from services.cli.suite import GaveUp, RestartPolicy, Suite, Supervisor
from services.cli.training import catalog_argument, train_and_publish
from services.console.launch import CONSOLE_PORT_OFFSET, RunningConsole, start_console
from services.datasets.loaders import Dataset, load_dataset
from services.datasets.movielens import download_movielens_100k
from services.embedding.encoder import resolve_device
from services.embedding.versions import ENCODERS_DIR
from services.ranker import distributed
from services.ranker.checkpoints import METADATA_FILE, CheckpointMetadata, latest_checkpoint
from services.ranker.encoder_tuning import TuningConfig
from services.ranker.training import TrainConfig

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_DATA = REPO_ROOT.parent / "shared" / "data" / "amazon-scientific"
DEFAULT_STATE = REPO_ROOT / "var"
# `recsys up` trains a first model within this many seconds of epochs when there is no checkpoint, so a first run
# serves within minutes; `recsys train` trains to early stopping.
UP_TRAIN_BUDGET_S = 60.0
EXIT_GAVE_UP = 3  # `recsys up`'s exit status when a service kept exiting and the suite was stopped


def _offline() -> None:
    # The model is on disk; a hub lookup would only hang on a machine without internet.
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        os.environ.setdefault(name, "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _dataset(args: argparse.Namespace) -> Dataset:
    path: Path = args.data
    if not path.exists():
        raise SystemExit(
            f"no dataset at {path}: pass --data FOLDER (benchmark, RecBole or plain format), or fetch MovieLens "
            "with `recsys download-movielens DEST` and pass --data DEST"
        )
    return load_dataset(path, args.format, limit_items=args.limit_items)


def _train_config(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(max_epochs=args.epochs, seed=args.seed, max_seconds=args.max_train_seconds or None)


def _tuning_config(args: argparse.Namespace) -> TuningConfig | None:
    """How the encoder is adapted to the interactions, or None (``--no-adapt-encoder``): on CUDA when present."""
    return TuningConfig(seed=args.seed, device=resolve_device("auto")) if args.adapt_encoder else None


def command_train(args: argparse.Namespace) -> None:
    dataset = _dataset(args)
    # Under `torchrun --nproc-per-node N -m services.cli.main train ...` the N processes train data-parallel.
    distributed.init_from_environment()
    path, result = train_and_publish(
        dataset,
        args.state_dir / "checkpoints",
        args.state_dir / "cache",
        _train_config(args),
        args.catalog,
        _tuning_config(args),
    )
    if path is not None:
        graph = result.graph_choice.to_dict() if result.graph_choice is not None else None
        fusion = result.fusion_choice.to_dict() if result.fusion_choice is not None else None
        encoder = CheckpointMetadata.from_file(path / METADATA_FILE).encoder_version
        document = {"checkpoint": str(path), "encoder_version": encoder, "metrics": result.metrics}
        print(json.dumps({**document, "graph": graph, "fusion": fusion}, indent=2))
        if encoder:
            encoders = args.state_dir / "checkpoints" / ENCODERS_DIR
            print(
                f"the checkpoint was trained on encoder {encoder}'s vectors. A running suite keeps scoring with the "
                f"newest model of the encoder its catalog serves; to move the catalog to this one, with the embedding "
                f"service reading EMBEDDING_ENCODER_DIR={encoders} (`recsys up` sets it), run:\n"
                f"  .venv/bin/recsys reindex --encoder {encoder}",
                file=sys.stderr,
            )


def command_eval(args: argparse.Namespace) -> None:
    from services.cli.evaluation import run_eval_command

    run_eval_command(args)


def command_experiments_report(args: argparse.Namespace) -> None:
    run_report(args.retriever, args.experiment, args.catalog, args.experiments_file, args.json)


def command_download_movielens(args: argparse.Namespace) -> None:
    print(download_movielens_100k(args.dest))


def _print_sample(client: RecsysClient, dataset: Dataset) -> None:
    sequences = dataset.sequences()
    user = max(sequences, key=lambda u: (len(sequences[u]), u))
    titles = {item.item_id: item.title for item in dataset.items}
    response = client.recommend(user, k=5, deadline=30)
    print(f"\nSample recommendation for user {user} ({response.strategy}, model {response.model_version or '-'})")
    print("  recent history:")
    for item_id in sequences[user][-3:]:
        print(f"    - {titles.get(item_id, item_id)[:90]}")
    print("  recommended:")
    for item in response.items:
        print(f"    {item.score:6.3f}  {item.title[:70]}\n            {item.reason}")


class StopRequested(BaseException):
    """SIGTERM or SIGINT reached `recsys up`: stop the suite at whatever step it is in."""


def _stop_requested(signum: int, _frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def command_up(args: argparse.Namespace) -> None:
    # From the first moment, so that a process manager's SIGTERM (which `make run` forwards to its child) stops
    # training, start-up and loading too, not only the serving loop.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _stop_requested)
    try:
        _up(args)
    except StopRequested as stop:  # asked to stop, and stopped: exit status 0
        print(f"{stop.args[0]} received: stopped", flush=True)


def _up(args: argparse.Namespace) -> None:
    state_dir: Path = args.state_dir
    print(f"loading the dataset from {args.data} ...", flush=True)
    dataset = _dataset(args)
    print(f"dataset {dataset.name}: {len(dataset.items)} items, {len(dataset.interactions)} interactions")
    if latest_checkpoint(state_dir / "checkpoints") is None:
        _train_first_model(args, dataset)

    suite = Suite(args.port, state_dir)
    console: RunningConsole | None = None
    policy = RestartPolicy(max_restarts=args.max_restarts, window_s=args.restart_window)
    supervisor = Supervisor(suite, policy, say=lambda line: print(line, flush=True))
    try:
        suite.start()
        pids = ", ".join(f"{name} pid {process.pid}" for name, process in suite.processes.items())
        print(f"started {pids} (logs in {state_dir / 'logs'}); waiting for each to report SERVING", flush=True)
        started = time.monotonic()
        with heartbeat("starting the services (the embedding model loads, the ranker reads its checkpoint)"):
            suite.wait_until_serving(
                on_serving=lambda name: print(f"  {name} SERVING after {time.monotonic() - started:.0f} s", flush=True)
            )
        print("all five services report SERVING")
        if args.console:
            console = start_console(suite)
        marker = state_dir / "qdrant" / f"loaded-{dataset.content_hash()[:16]}"
        with RecsysClient(suite.address("gateway")) as client:
            if not marker.exists():
                print("loading the catalog and its interactions through the gateway (once per state folder)")
                try:
                    ingest(client, dataset)
                except RecsysError as error:
                    raise SystemExit(
                        f"loading the data failed: {error.code.name}: {error.message}; "
                        f"see the logs in {state_dir / 'logs'}"
                    ) from None
                marker.touch()
            _print_sample(client, dataset)
        print(f"\ngateway on {suite.address('gateway')}; try: grpcurl -plaintext {suite.address('gateway')} list")
        if console is not None:
            print(f"operator console on {console.url}")
        print(
            f"a service that exits is restarted (at most {policy.max_restarts} times within "
            f"{policy.window_s:.0f} s, then `recsys up` stops all and exits with status {EXIT_GAVE_UP})"
        )
        print("serving until Ctrl-C", flush=True)
        while True:
            supervisor.check()
            time.sleep(0.5)
    except GaveUp as gave_up:
        print(f"giving up: {gave_up}", file=sys.stderr, flush=True)
        raise SystemExit(EXIT_GAVE_UP) from None
    finally:
        # A second Ctrl-C or SIGTERM must not cut the shutdown short and leave services running on their own.
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if console is not None:
            console.stop()
        print("stopping the five services ...", flush=True)
        codes = suite.stop()
        print("stopped: " + ", ".join(f"{name}={code}" for name, code in codes.items()), flush=True)


def _train_first_model(args: argparse.Namespace, dataset: Dataset) -> None:
    budget = args.max_train_seconds
    if budget is None:
        print("no ranker checkpoint yet: training one (once; no time budget)", flush=True)
    else:
        print(
            f"no ranker checkpoint yet: training a first one with a budget of {budget:.0f} s of epochs, so the suite "
            "serves within minutes (once; `--max-train-seconds 0` trains without a budget)",
            flush=True,
        )
    started = time.monotonic()
    path, result = train_and_publish(
        dataset, args.state_dir / "checkpoints", args.state_dir / "cache", _train_config(args)
    )
    print(
        f"ranker trained in {time.monotonic() - started:.0f} s ({result.epochs} epochs): validation NDCG@10 "
        f"{result.metrics.get('val_ndcg@10', float('nan')):.4f}; checkpoint {path}",
        flush=True,
    )
    if budget is not None:
        print(
            f"for the full model (early stopping without a time budget) run, now or while the suite serves:\n"
            f"  .venv/bin/recsys train --data {args.data} --state-dir {args.state_dir}\n"
            "the running ranker picks up the newer checkpoint by itself",
            flush=True,
        )


def command_reindex(args: argparse.Namespace) -> None:
    import grpc

    from services.cli.reindex import Reindexer, ReindexError
    from services.common.encoders import encoder_from_token, encoder_label

    version = encoder_from_token(args.drop if args.drop is not None else args.encoder)
    addresses = {
        "retriever": args.retriever,
        "embedding": args.embedding,
        "ranker": args.ranker,
        "preprocessor": args.preprocessor,
    }
    channels = {name: grpc.insecure_channel(address) for name, address in addresses.items()}
    try:
        reindexer = Reindexer(channels, args.catalog, version, batch=args.batch, token=args.token)
        if args.drop is not None:
            state = reindexer.drop()
            print(json.dumps({"catalog": args.catalog, "dropped": version, "serving": state.serving}, indent=2))
            return
        report = reindexer.run(switch=args.switch, switch_timeout_s=args.switch_timeout)
    except ReindexError as error:
        raise SystemExit(f"reindex stopped: {error}") from None
    except grpc.RpcError as error:
        raise SystemExit(f"reindex stopped: {error.code().name}: {error.details()}") from None
    finally:
        for channel in channels.values():
            channel.close()
    print(json.dumps(asdict(report), indent=2))
    if report.switched:
        previous = report.previous or "base"
        print(
            f"serving {encoder_label(version)}; {encoder_label(report.previous)} is kept for rollback "
            f"(`recsys reindex --encoder {previous}`) until `recsys reindex --drop {previous}`",
            file=sys.stderr,
        )
    else:
        print(f"the staged copy of {encoder_label(version)} is filled; run again without --no-switch", file=sys.stderr)


def command_console(args: argparse.Namespace) -> None:
    # Imported here: the console's web stack is an optional extra (pip install '.[console]').
    from services.console.__main__ import serve
    from services.console.config import ConsoleSettings

    overrides = {"port": args.port, "gateway_address": args.gateway, "retriever_address": args.retriever}
    serve(ConsoleSettings().model_copy(update={k: v for k, v in overrides.items() if v is not None}))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="recsys", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def data_options(command: argparse.ArgumentParser) -> None:
        command.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"dataset folder (default {DEFAULT_DATA})")
        command.add_argument("--format", default="auto", choices=["auto", "benchmark", "recbole", "plain"])
        command.add_argument("--limit-items", type=int, default=None, help="keep only the first N items")
        command.add_argument("--state-dir", type=Path, default=DEFAULT_STATE, help="checkpoints, index, logs")
        command.add_argument("--epochs", type=int, default=40, help="most training epochs (early stopping)")
        command.add_argument("--seed", type=int, default=0)
        command.add_argument(
            "--max-train-seconds", type=float, default=None, help="wall-clock cap on training epochs (0: none)"
        )
        command.add_argument(
            "--adapt-encoder",
            action=argparse.BooleanOptionalAction,
            default=True,
            help="fine-tune the encoder's top layers on the training interactions and train the ranker on both "
            "encoders' vectors; the adapted one only where it beats the frozen one on validation beyond noise "
            "(eval: report both)",
        )

    up = commands.add_parser("up", help="train if needed, start the five services, load the data, serve")
    data_options(up)
    up.add_argument("--port", type=int, default=50050, help="gateway port; the backends take the next four")
    up.add_argument(
        "--max-restarts",
        type=int,
        default=RestartPolicy.max_restarts,
        help="restarts of one service allowed within --restart-window before `recsys up` stops all and exits "
        f"with status {EXIT_GAVE_UP} (default %(default)s)",
    )
    up.add_argument(
        "--restart-window", type=float, default=RestartPolicy.window_s, help="seconds (default %(default)s)"
    )
    up.add_argument(
        "--no-console",
        dest="console",
        action="store_false",
        help=f"do not start the operator console (HTTP on the gateway port + {CONSOLE_PORT_OFFSET})",
    )
    # A first run serves the base encoder, so it starts within minutes; `recsys train` then adapts the encoder
    # and `recsys reindex` moves the running catalog to it.
    up.set_defaults(handler=command_up, max_train_seconds=UP_TRAIN_BUDGET_S, adapt_encoder=False)

    train = commands.add_parser("train", help="train the ranker and publish a versioned checkpoint")
    data_options(train)
    train.add_argument(
        "--catalog",
        type=catalog_argument,
        default="",
        help="catalog whose model this is (1-64 of a-z 0-9 _ -, starting with a letter or digit); written to "
        "STATE_DIR/checkpoints/catalogs/NAME (default: the default catalog, STATE_DIR/checkpoints)",
    )
    train.set_defaults(handler=command_train)

    evaluation = commands.add_parser(
        "eval",
        help="evaluate every model side by side (offline), or what a running suite serves (--through-gateway)",
        description="Offline: popularity, ItemKNN, EASE, ID-only, text-only, a naive blend and ours on one split, "
        "full ranking, tuned on validation, scored on test (and on the cold-start protocol). With "
        "--through-gateway: replay test users into a running suite and compare Recommend with the offline number.",
    )
    data_options(evaluation)
    evaluation.add_argument(
        "--protocol",
        default="loo",
        choices=["loo", "ratio"],
        help="loo (by time) or ratio (seeded 8:1:1); the benchmark format always uses its own split",
    )
    evaluation.add_argument(
        "--mask",
        default="both",
        choices=["both", "masked", "unmasked"],
        help="remove each user's seen items from the ranking (stated in every output row)",
    )
    evaluation.add_argument("--min-rating", type=float, default=None, help="drop interactions rated below this")
    evaluation.add_argument("--core", type=int, default=0, help="k-core filter on users and items (0: none)")
    evaluation.add_argument("--no-cold-start", action="store_true", help="skip the cold-start protocol")
    evaluation.add_argument("--json", type=Path, default=None, help="write every result row here")
    evaluation.add_argument("--plot", type=Path, default=None, help="write a PNG comparing the models here")
    evaluation.add_argument("--through-gateway", metavar="ADDRESS", default=None, help="served evaluation")
    evaluation.add_argument(
        "--retriever", metavar="ADDRESS", default=None, help="retriever for candidate recall (gateway port + 3)"
    )
    evaluation.add_argument("--users", type=int, default=1000, help="test users replayed in the served evaluation")
    evaluation.add_argument(
        "--queries",
        action="store_true",
        help="with --through-gateway: personalised search (a query from each user's held-out item; search only, "
        "recommend only, personalised+query) and the share of reasons whose named item is truly similar",
    )
    evaluation.add_argument(
        "--validation-users",
        action="store_true",
        help="with --queries: score validation users instead of test users (to choose settings such as "
        "GATEWAY_QUERY_WEIGHT without looking at test)",
    )
    evaluation.set_defaults(handler=command_eval)

    experiments = commands.add_parser("experiments", help="A/B experiments")
    experiment_commands = experiments.add_subparsers(dest="experiments_command", required=True)
    experiment_report = experiment_commands.add_parser(
        "report",
        help="per-arm click-through and conversion with 95%% intervals, from recorded impressions and events",
    )
    experiment_report.add_argument("--experiment", required=True, help="the experiment's name")
    experiment_report.add_argument(
        "--retriever", metavar="ADDRESS", default="127.0.0.1:50053", help="retriever that holds the impressions"
    )
    experiment_report.add_argument("--catalog", default="", help="the experiment's catalog (default: the default)")
    experiment_report.add_argument(
        "--experiments-file", type=Path, default=None, help="the gateway's experiments file, for the arms' order"
    )
    experiment_report.add_argument("--json", type=Path, default=None, help="write the per-arm rows here")
    experiment_report.set_defaults(handler=command_experiments_report)

    reindex = commands.add_parser(
        "reindex",
        help="move a catalog to another encoder: embed its items again into a staged copy, then switch at once",
        description="Embeds every item of a catalog again with another encoder into a staged copy while the old "
        "one serves, catches up what was written meanwhile, then switches retriever, queries and ranker together "
        "in one step. The old copy is kept for rollback (`--encoder OLD`) until `--drop OLD`. docs/operations.md "
        "has the runbook.",
    )
    target = reindex.add_mutually_exclusive_group(required=True)
    target.add_argument("--encoder", help="the encoder version to serve (`base` for the packaged model)")
    target.add_argument("--drop", metavar="VERSION", help="delete the staged copy of this encoder instead")
    reindex.add_argument("--catalog", type=catalog_argument, default="", help="the catalog (default: the default)")
    reindex.add_argument("--retriever", default="127.0.0.1:50053", help="retriever address (default %(default)s)")
    reindex.add_argument("--embedding", default="127.0.0.1:50052", help="embedding address (default %(default)s)")
    reindex.add_argument("--ranker", default="127.0.0.1:50054", help="ranker address (default %(default)s)")
    reindex.add_argument("--preprocessor", default="127.0.0.1:50051", help="preprocessor address (default %(default)s)")
    reindex.add_argument(
        "--token",
        default=os.environ.get("RECSYS_AUTH_TOKEN", ""),
        help="bearer token the services require, if any (default: $RECSYS_AUTH_TOKEN)",
    )
    reindex.add_argument("--batch", type=int, default=64, help="items embedded per call (default %(default)s)")
    reindex.add_argument(
        "--no-switch", dest="switch", action="store_false", help="fill the staged copy, do not switch yet"
    )
    reindex.add_argument(
        "--switch-timeout",
        type=float,
        default=600.0,
        help="seconds to wait for a running index build before switching (default %(default)s)",
    )
    reindex.set_defaults(handler=command_reindex)

    console = commands.add_parser(
        "console",
        help="serve the operator console (HTTP) for a running suite; settings from CONSOLE_* variables",
    )
    console.add_argument("--port", type=int, default=None, help="HTTP port (default CONSOLE_PORT or 50055)")
    console.add_argument("--gateway", default=None, help="gateway address (default CONSOLE_GATEWAY_ADDRESS)")
    console.add_argument("--retriever", default=None, help="retriever address (default CONSOLE_RETRIEVER_ADDRESS)")
    console.set_defaults(handler=command_console)

    download = commands.add_parser("download-movielens", help="fetch MovieLens-100K into the plain format")
    download.add_argument("dest", type=Path)
    download.set_defaults(handler=command_download_movielens)
    return parser


def main(argv: list[str] | None = None) -> None:
    _offline()
    args = build_parser().parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
