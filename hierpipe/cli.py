"""The `hierpipe` command. Thin: parse arguments, call the package, exit with a clear message.

Every verb reads and writes files only, so Snakemake rules (and users) can call it directly.
Bad input ends with one line, `hierpipe <verb>: error: <what and where>`, and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Sequence

from hierpipe.core.errors import HierpipeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(message)s", stream=sys.stderr)
    logging.getLogger("hierpipe").info("hierpipe %s %s", args.verb, _where())
    if getattr(args, "threads", None):
        _limit_threads(args.threads)
    try:
        args.handler(args)
    except HierpipeError as error:
        print(f"hierpipe {args.verb}: error: {error}", file=sys.stderr)
        return 1
    return 0


def _data_prepare(args: argparse.Namespace) -> None:
    from hierpipe.data import prepare_dataset

    prepare_dataset(args.dataset, args.out, _key_values(args.option, "--option"), args.source)


def _data_split(args: argparse.Namespace) -> None:
    from hierpipe.data import make_split

    fractions = {
        k: float(v) for k, v in _key_values(args.fractions.split(","), "--fractions").items()
    }
    make_split(args.root, args.name, args.scheme, fractions, args.seed, args.predefined)


def _config_run(args: argparse.Namespace) -> None:
    from hierpipe.core.config import RunConfig, json_mapping, write_run_config

    config = RunConfig.from_dict(json_mapping(args.json, "--json"), source="--json")
    write_run_config(config, args.out)


def _config_experiment(args: argparse.Namespace) -> None:
    from hierpipe.core.config import json_mapping, write_resolved_params

    write_resolved_params(json_mapping(args.json, "--json"), args.out)


def _tracking_start(args: argparse.Namespace) -> None:
    from hierpipe.runtime.tracking import start_workflow_run

    print(start_workflow_run(args.root, args.experiment) or "")


def _tracking_end(args: argparse.Namespace) -> None:
    from hierpipe.runtime.tracking import end_workflow_run

    end_workflow_run(args.status)


def _train(args: argparse.Namespace) -> None:
    from hierpipe.core.config import read_run_config
    from hierpipe.train.engine import train_run

    train_run(read_run_config(args.config), args.model_out, args.log_out, args.checkpoint_dir)


def _embed(args: argparse.Namespace) -> None:
    from hierpipe.evaluation.export import export_embeddings

    export_embeddings(args.model, args.embeddings_out, args.representatives_out, args.batch_size)


def _evaluate(args: argparse.Namespace) -> None:
    from hierpipe.core.config import read_run_config
    from hierpipe.evaluation.evaluate import evaluate_run

    evaluate_run(read_run_config(args.config), args.embeddings, args.representatives, args.out)


def _aggregate(args: argparse.Namespace) -> None:
    from hierpipe.core.config import read_yaml_mapping
    from hierpipe.reporting.aggregate import aggregate

    params = read_yaml_mapping(args.params, "experiment params") if args.params else None
    aggregate(args.metrics, args.out_dir, args.headline_out, params)


def _figures(args: argparse.Namespace) -> None:
    from hierpipe.core.config import read_yaml_mapping
    from hierpipe.reporting.plots.render import render_figures
    from hierpipe.runtime.tracking import log_figures

    params = read_yaml_mapping(args.params, "experiment params")
    written = render_figures(params, args.results_dir, args.group)
    log_figures(
        [
            (
                None if figure.model is None else f"{figure.dataset}/{figure.runs[0]}/evaluate",
                f"figures/{figure.dataset}" if figure.model is None else "figures",
                path,
            )
            for figure, paths in written.items()
            for path in paths
        ]
    )


def _measure(args: argparse.Namespace) -> None:
    from hierpipe.evaluation.external import measure_embeddings
    from hierpipe.reporting.measured import report_measured

    metrics = measure_embeddings(
        args.embeddings,
        args.tree,
        args.out_dir,
        name=args.name,
        representatives_path=args.representatives,
        subset=args.subset,
        distance=args.distance,
        curvature=args.curvature,
        seed=args.seed,
    )
    report_measured(metrics, args.out_dir)


def _fetch_weights(args: argparse.Namespace) -> None:
    from hierpipe.train.pretrained_weights import fetch_weights

    fetch_weights(args.backbone, args.out, args.url)


def _ui(args: argparse.Namespace) -> None:
    from pathlib import Path

    from hierpipe.runtime.tracking import run_ui

    status = run_ui(Path.cwd(), args.host, args.port)
    if status < 0:  # stopped by a signal, as a server is: exit as the shell reports it
        raise SystemExit(128 - status)
    if status:
        raise HierpipeError(f"mlflow ui exited with status {status}")


# Thread pools read these when their library is imported, which no verb has done yet.
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def _limit_threads(threads: int) -> None:
    """Run on `threads` CPU threads (a cluster job's allocation), in every thread pool."""
    os.environ.update(dict.fromkeys(_THREAD_VARIABLES, str(threads)))
    import torch

    torch.set_num_threads(threads)


def _add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threads", type=int, help="CPU threads of every thread pool (torch, BLAS, numba)"
    )


def _where() -> str:
    """Where this command runs, for the job's log: in which container (Apptainer names its
    image in APPTAINER_CONTAINER) or on the host, on which system, with which Python."""
    image = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    try:
        release = platform.freedesktop_os_release()
    except OSError:
        release = {"PRETTY_NAME": platform.platform()}
    system = release.get("PRETTY_NAME", "unknown system")
    if "BUILD_ID" in release:  # an image build that stamped its os-release
        system += f", build {release['BUILD_ID']}"
    place = f"in the container {image}" if image else "on the host"
    return f"{place} ({system}; Python {platform.python_version()}, {sys.executable})"


def _key_values(items: Sequence[str] | None, flag: str) -> dict[str, str]:
    values = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HierpipeError(f"{flag} {item!r}: expected KEY=VALUE")
        values[key.strip()] = value.strip()
    return values


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hierpipe", description="Hierarchical metric learning experiments, step by step."
    )
    verbs = parser.add_subparsers(dest="verb", required=True, metavar="VERB")

    data = verbs.add_parser("data", help="prepare datasets and splits")
    data_verbs = data.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    prepare = data_verbs.add_parser(
        "prepare", help="download/generate a dataset into samples.parquet + classes.parquet"
    )
    prepare.add_argument("dataset", help="a registered dataset name, e.g. shapes")
    prepare.add_argument("--out", required=True, help="dataset directory to write")
    prepare.add_argument("--source", help="mirror URL, local archive or extracted directory")
    prepare.add_argument(
        "--option", action="append", metavar="KEY=VALUE", help="a builder option (repeatable)"
    )
    _add_threads(prepare)
    prepare.set_defaults(handler=_data_prepare, verb="data prepare")
    split = data_verbs.add_parser("split", help="write a deterministic split of a dataset")
    split.add_argument("root", help="dataset directory (with samples.parquet)")
    split.add_argument(
        "--name", required=True, help="split name: writes <root>/splits/<name>.parquet"
    )
    split.add_argument("--scheme", required=True, help="by_image, by_class or predefined")
    split.add_argument(
        "--predefined", help="with --scheme predefined: the dataset's own split, e.g. official"
    )
    split.add_argument(
        "--fractions", required=True, metavar="SUBSET=F,...", help="e.g. train=0.6,val=0.2,test=0.2"
    )
    split.add_argument("--seed", type=int, required=True)
    _add_threads(split)
    split.set_defaults(handler=_data_split, verb="data split")

    config = verbs.add_parser("config", help="write resolved settings (the workflow's first jobs)")
    config_verbs = config.add_subparsers(dest="config_verb", required=True, metavar="ACTION")
    config_run = config_verbs.add_parser(
        "run", help="write one run's resolved settings (config.yaml)"
    )
    config_run.add_argument("--json", required=True, help="the run's settings as JSON")
    config_run.add_argument("--out", required=True, help="config.yaml to write")
    config_run.set_defaults(handler=_config_run, verb="config run")
    config_experiment = config_verbs.add_parser(
        "experiment", help="write the params as run, with every run's resolved settings"
    )
    config_experiment.add_argument("--json", required=True, help="the validated params as JSON")
    config_experiment.add_argument("--out", required=True, help="params.yaml to write")
    config_experiment.set_defaults(handler=_config_experiment, verb="config experiment")

    tracking = verbs.add_parser("tracking", help="the MLflow run of a workflow invocation")
    tracking_verbs = tracking.add_subparsers(dest="tracking_verb", required=True, metavar="ACTION")
    tracking_start = tracking_verbs.add_parser(
        "start", help="create store, experiment and parent run; print the run id"
    )
    tracking_start.add_argument("--experiment", required=True)
    tracking_start.add_argument("--root", required=True, help="the workflow directory")
    tracking_start.set_defaults(handler=_tracking_start, verb="tracking start")
    tracking_end = tracking_verbs.add_parser(
        "end", help="end the parent run named by $HIERPIPE_MLFLOW_PARENT_RUN_ID"
    )
    tracking_end.add_argument("--status", required=True, choices=("FINISHED", "FAILED"))
    tracking_end.set_defaults(handler=_tracking_end, verb="tracking end")

    train = verbs.add_parser("train", help="train one run (resumes from its checkpoint)")
    train.add_argument("--config", required=True, help="the run's config.yaml")
    train.add_argument("--model-out", required=True, help="model.pt to write")
    train.add_argument("--log-out", required=True, help="per-epoch log (Parquet) to write")
    train.add_argument("--checkpoint-dir", required=True, help="where resumable state lives")
    _add_threads(train)
    train.set_defaults(handler=_train, verb="train")

    embed = verbs.add_parser("embed", help="export embeddings and class representatives")
    embed.add_argument("--model", required=True, help="model.pt of a run")
    embed.add_argument("--embeddings-out", required=True)
    embed.add_argument("--representatives-out", required=True)
    embed.add_argument("--batch-size", type=int, default=256)
    _add_threads(embed)
    embed.set_defaults(handler=_embed, verb="embed")

    evaluate = verbs.add_parser("evaluate", help="compute every measure into metrics.json")
    evaluate.add_argument("--config", required=True, help="the run's config.yaml")
    evaluate.add_argument("--embeddings", required=True)
    evaluate.add_argument("--representatives", required=True)
    evaluate.add_argument("--out", required=True, help="metrics.json to write")
    _add_threads(evaluate)
    evaluate.set_defaults(handler=_evaluate, verb="evaluate")

    aggregate = verbs.add_parser("aggregate", help="summary tables over runs and seeds")
    aggregate.add_argument("metrics", nargs="+", help="metrics.json files")
    aggregate.add_argument(
        "--out-dir",
        required=True,
        help="writes summary, comparisons and retrieval_table (.parquet/.csv/.md)",
    )
    aggregate.add_argument(
        "--params", help="the experiment's params (statistics settings, comparisons)"
    )
    aggregate.add_argument(
        "--headline-out", help="also write the headline means as JSON (DVC's metrics file)"
    )
    _add_threads(aggregate)
    aggregate.set_defaults(handler=_aggregate, verb="aggregate")

    from hierpipe.reporting.plots.plan import GROUPS

    figures = verbs.add_parser(
        "figures", help="draw the experiment's figures (PNG and PDF) from its results"
    )
    figures.add_argument("--params", required=True, help="the experiment's params.yaml")
    figures.add_argument("--results-dir", required=True, help="results/<experiment>")
    figures.add_argument(
        "--group", choices=GROUPS, help="draw only this group of figures (default: all)"
    )
    _add_threads(figures)
    figures.set_defaults(handler=_figures, verb="figures")

    measure = verbs.add_parser(
        "measure",
        help="every classifier-free measure of any model's embeddings against a class tree, "
        "with the summary tables and the tree figure (hierpipe.evaluation.external)",
    )
    measure.add_argument(
        "embeddings",
        help="a .parquet, .npz or structured .npy file: embedding, label[, sample_id, split]",
    )
    measure.add_argument(
        "--tree",
        required=True,
        help="a prepared dataset directory (data/<name>), its classes.parquet, or a "
        "node,parent,label CSV",
    )
    measure.add_argument("--out-dir", required=True, help="where metrics.json and tables go")
    measure.add_argument("--name", help="the model's name in the tables (default: file name)")
    measure.add_argument(
        "--representatives", help="class representatives (representatives.parquet layout)"
    )
    measure.add_argument("--subset", default="test", help="the split subset to evaluate")
    measure.add_argument(
        "--distance", choices=("cosine", "euclidean", "poincare"), default="cosine"
    )
    measure.add_argument("--curvature", type=float, default=0.1, help="with --distance poincare")
    measure.add_argument("--seed", type=int, default=0, help="of the random-vector chance level")
    _add_threads(measure)
    measure.set_defaults(handler=_measure, verb="measure")

    weights = verbs.add_parser("weights", help="pretrained backbone weights")
    weights_verbs = weights.add_subparsers(dest="weights_verb", required=True, metavar="ACTION")
    fetch = weights_verbs.add_parser(
        "fetch",
        help="download a backbone's pretrained weights from the source the papers used, verify "
        "and record their sha256, and write the state dict training loads",
    )
    fetch.add_argument("backbone", help="the timm name, as params' backbone.name")
    fetch.add_argument("--out", required=True, help="the file params' backbone.weights names")
    fetch.add_argument("--url", help="a mirror of the same file (http://, https:// or file://)")
    fetch.set_defaults(handler=_fetch_weights, verb="weights fetch")

    ui = verbs.add_parser(
        "ui", help="browse the MLflow runs (store: $MLFLOW_TRACKING_URI or ./mlflow/mlflow.db)"
    )
    ui.add_argument("--port", type=int, default=5000)
    ui.add_argument("--host", default="127.0.0.1", help="0.0.0.0 exposes it to the network")
    ui.set_defaults(handler=_ui, verb="ui")
    return parser


if __name__ == "__main__":
    sys.exit(main())
