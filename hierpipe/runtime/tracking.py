"""MLflow tracking: one parent run per workflow invocation, one child run per train/evaluate job.

The Snakefile's `onstart:` calls `start_workflow_run` once, in the single Snakemake process:
it creates the store, the experiment and the parent run before any job starts, because many
jobs opening a fresh SQLite store at once all run its migrations and fail, and jobs racing to
create one experiment may log into the Default one. Jobs find the store and the parent through
the environment (`MLFLOW_TRACKING_URI`, `HIERPIPE_MLFLOW_PARENT_RUN_ID`); without the parent
id nothing is logged, so `hierpipe train` outside the workflow and the unit tests stay offline.

The engine and the evaluation only see `RunTracker` (or the no-op `NullTracker`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from hierpipe.core.errors import HierpipeError

URI_ENV = "MLFLOW_TRACKING_URI"
PARENT_ENV = "HIERPIPE_MLFLOW_PARENT_RUN_ID"
ENABLED_ENV = "HIERPIPE_MLFLOW"  # "0" turns tracking off, parent run included
LOG_MODEL_ENV = "HIERPIPE_MLFLOW_LOG_MODEL"  # "0" keeps model.pt out of the artifacts

STORE_DIR = "mlflow"
# MLflow 3.17 accepts 6000 characters; 500 is the limit older tracking servers enforce
MAX_PARAM_LENGTH = 500
MAX_KEY_LENGTH = 250

Step = Literal["train", "evaluate"]


def tracking_enabled() -> bool:
    return os.environ.get(ENABLED_ENV, "1") != "0"


def tracking_uri(root: str | Path) -> str:
    """`MLFLOW_TRACKING_URI` if set (a server on clusters), else `<root>/mlflow/mlflow.db`.

    Absolute, because MLflow resolves a relative SQLite path against each job's working
    directory, and its default is `./mlflow.db`.
    """
    if os.environ.get(URI_ENV):
        return os.environ[URI_ENV]
    return f"sqlite:///{Path(root).resolve() / STORE_DIR / 'mlflow.db'}"


def start_workflow_run(
    root: str | Path,
    experiment: str,
    *,
    dry_run: bool = False,
    image: WorkflowImage | None = None,
) -> str | None:
    """Create store, experiment and parent run; export them to the jobs. Returns the run id.

    With `image` (the workflow runs its jobs in a container) the image's MLflow does it, so
    the host needs no MLflow and the store is written by the version the jobs write with.
    Nothing is created for a dry run or with `HIERPIPE_MLFLOW=0`. Snakemake 9 already skips
    `onstart:` for `-n`; the flag keeps that true should the hook semantics change.
    """
    if dry_run or not tracking_enabled():
        return None
    root = Path(root).resolve()
    if image is not None:
        output = image.run(
            ["hierpipe", "tracking", "start", "--experiment", experiment, "--root", str(root)], root
        )
        parent_id = output.strip().splitlines()[-1] if output.strip() else ""
        if not re.fullmatch(r"[0-9a-f]{32}", parent_id):
            raise HierpipeError(
                f"hierpipe tracking start in {image.path} printed {output.strip()!r}; "
                "expected the run id of the workflow's MLflow run"
            )
        _export_run(tracking_uri(root), parent_id)
        return parent_id
    from mlflow import MlflowClient

    uri = tracking_uri(root)
    default_store = not os.environ.get(URI_ENV)
    if default_store:
        (root / STORE_DIR).mkdir(parents=True, exist_ok=True)
    with _store_errors(uri, "create the experiment and the workflow run"):
        client = MlflowClient(uri)
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            # with the local store, artifacts beside the DB: MLflow's default is ./mlruns of
            # whichever directory the creating process ran in
            location = (root / STORE_DIR / "artifacts").as_uri() if default_store else None
            experiment_id = client.create_experiment(experiment, artifact_location=location)
        run = client.create_run(
            experiment_id,
            run_name=f"{experiment}/workflow-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={"hierpipe.root": str(root)},
        )
    _export_run(uri, run.info.run_id)
    return run.info.run_id


def _export_run(uri: str, parent_id: str) -> None:
    """Tell the jobs (and the hooks at the end) where the store and the parent run are."""
    for prefix in ("", "APPTAINERENV_"):  # APPTAINERENV_*: still seen under --cleanenv
        os.environ[prefix + URI_ENV] = uri
        os.environ[prefix + PARENT_ENV] = parent_id


def end_workflow_run(
    status: Literal["FINISHED", "FAILED"], *, image: WorkflowImage | None = None
) -> None:
    """End the parent run `start_workflow_run` exported, if there is one (in `image`, when
    the workflow runs its jobs in one)."""
    parent_id = os.environ.get(PARENT_ENV)
    if not parent_id or not tracking_enabled():
        return
    if image is not None:
        image.run(["hierpipe", "tracking", "end", "--status", status], Path.cwd())
        return
    from mlflow import MlflowClient

    uri = os.environ[URI_ENV]
    with _store_errors(uri, f"end the workflow run {parent_id}"):
        MlflowClient(uri).set_terminated(parent_id, status=status)


@dataclass(frozen=True)
class WorkflowImage:
    """The container image the workflow's jobs run in, for the workflow hooks to run in too.

    `path` is a local image file or a URL Apptainer can pull (docker://...); `args` are the
    workflow's own Apptainer arguments (binds, --cleanenv, ...).
    """

    path: str
    args: tuple[str, ...] = ()

    def run(self, command: Sequence[str], root: Path) -> str:
        """Run `command` in the image as Snakemake runs a job (home and working directory
        the workflow directory, the MLflow variables passed under --cleanenv); its stdout."""
        runtime = shutil.which("apptainer") or shutil.which("singularity")
        if runtime is None:
            raise HierpipeError(
                "neither apptainer nor singularity is on PATH; --use-singularity needs one"
            )
        call = [runtime, "exec", "--home", str(root), *self.args, self.path, *command]
        passed = {
            f"APPTAINERENV_{name}": os.environ[name]
            for name in (URI_ENV, ENABLED_ENV)
            if name in os.environ
        }
        result = subprocess.run(
            call, cwd=root, env={**os.environ, **passed}, capture_output=True, text=True
        )
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise HierpipeError(
                f"{' '.join(command)} in the image {self.path} failed "
                f"(exit {result.returncode}): {last}"
            )
        return result.stdout


def log_figures(figures: Sequence[tuple[str | None, str, Path]]) -> None:
    """Log figure files as artifacts: (run name, artifact folder, file) each.

    A run name (`<dataset>/<run id>/evaluate`) sends the file to the newest entry of that
    name in the workflow's experiment, so a run's figures sit beside its metrics; None (or a
    name with no entry yet) sends it to the workflow's parent run. Outside the workflow
    nothing is logged.
    """
    parent_id = os.environ.get(PARENT_ENV)
    if not parent_id or not tracking_enabled():
        return
    from mlflow import MlflowClient

    uri = os.environ[URI_ENV]
    with _store_errors(uri, "log figures"):
        client = MlflowClient(uri)
        experiment_id = client.get_run(parent_id).info.experiment_id
        targets: dict[str | None, str] = {None: parent_id}
        for name, folder, path in figures:
            if name not in targets:
                found = client.search_runs(
                    [experiment_id],
                    filter_string=f"attributes.run_name = '{name}'",
                    order_by=["attributes.start_time DESC"],
                    max_results=1,
                )
                targets[name] = found[0].info.run_id if found else parent_id
            client.log_artifact(targets[name], str(path), folder)


def run_tracker(config: Any, step: Step) -> RunTracker | NullTracker:
    """A child run of the workflow's parent for this job, or a no-op outside the workflow.

    `config` is the run's RunConfig; its flattened fields and the split's hashes are logged as
    params right away.
    """
    parent_id = os.environ.get(PARENT_ENV)
    if not parent_id or not tracking_enabled():
        return NullTracker()
    uri = os.environ.get(URI_ENV)
    if not uri:
        raise HierpipeError(f"{PARENT_ENV} is set but {URI_ENV} is not: where is the store?")
    tracker = RunTracker(uri, parent_id, f"{config.dataset}/{config.run_id}/{step}")
    tracker.log_params({**flatten_params(config.to_dict()), **split_params(config.split_path)})
    return tracker


class RunTracker:
    """One MLflow child run; a context manager that ends it FINISHED, FAILED or KILLED."""

    def __init__(self, uri: str, parent_id: str, name: str) -> None:
        from mlflow import MlflowClient

        self.uri = uri
        _check_store_exists(uri, f"or unset {PARENT_ENV} to run without tracking")
        with self._errors(f"start run {name!r} under parent {parent_id}"):
            self._client = MlflowClient(uri)
            # the parent's experiment: jobs never look an experiment up by name (creation race)
            experiment_id = self._client.get_run(parent_id).info.experiment_id
            run = self._client.create_run(
                experiment_id, run_name=name, tags={"mlflow.parentRunId": parent_id}
            )
        self.run_id = run.info.run_id

    def log_params(self, params: Mapping[str, Any]) -> None:
        from mlflow.entities import Param

        entries = [Param(key[:MAX_KEY_LENGTH], _param_value(v)) for key, v in params.items()]
        with self._errors("log params"):
            self._client.log_batch(self.run_id, params=entries)

    def log_metrics(self, values: Mapping[str, float | None], step: int = 0) -> None:
        """All values in one `log_batch` call (SQLite serialises writers); None is skipped."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [
            Metric(sanitize_metric_name(key), float(value), now, step)
            for key, value in values.items()
            if value is not None
        ]
        with self._errors(f"log metrics of step {step}"):
            self._client.log_batch(self.run_id, metrics=metrics)

    def log_artifact(self, path: str | Path) -> None:
        with self._errors(f"log artifact {path}"):
            self._client.log_artifact(self.run_id, str(path))

    def log_config(self, config: Any) -> None:
        """The resolved run config as config.yaml, the same text `write_run_config` writes."""
        from hierpipe.core.config import write_run_config

        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / "config.yaml"
            write_run_config(config, path)
            self.log_artifact(path)

    def log_model(self, path: str | Path) -> None:
        """The model file as a run artifact unless `HIERPIPE_MLFLOW_LOG_MODEL=0`."""
        if os.environ.get(LOG_MODEL_ENV, "1") != "0":
            self.log_artifact(path)

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if kind is None:
            status = "FINISHED"
        elif issubclass(kind, KeyboardInterrupt):
            status = "KILLED"
        else:
            status = "FAILED"
        with self._errors(f"end run {self.run_id}"):
            self._client.set_terminated(self.run_id, status=status)

    def _errors(self, what: str):
        return _store_errors(self.uri, what)


class NullTracker:
    """Tracking off: every call does nothing."""

    run_id = None

    def log_params(self, params: Mapping[str, Any]) -> None:
        pass

    def log_metrics(self, values: Mapping[str, float | None], step: int = 0) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def log_config(self, config: Any) -> None:
        pass

    def log_model(self, path: str | Path) -> None:
        pass

    def __enter__(self) -> NullTracker:
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass


def flatten_params(values: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings as `a.b.c` keys; leaves (lists included) as strings."""
    flat: dict[str, str] = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten_params(value, f"{name}."))
        else:
            flat[name] = _param_value(value)
    return flat


def sanitize_metric_name(name: str) -> str:
    """MLflow keys allow alphanumerics, `_ - . / space`: `recall@1` becomes `recall_at_1`."""
    name = name.replace("@", "_at_")
    return re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)[:MAX_KEY_LENGTH]


def split_params(path: str | Path) -> dict[str, str]:
    """The split file's path and content hashes. DVC's hash of a single file is its MD5, so
    `data.split_md5` is the value in the split's .dvc file or dvc.lock."""
    content = Path(path).read_bytes()
    return {
        "data.split_path": str(path),
        "data.split_sha256": hashlib.sha256(content).hexdigest(),
        "data.split_md5": hashlib.md5(content).hexdigest(),
    }


# How long `mlflow ui`'s process group gets to stop on SIGTERM before it is killed.
UI_STOP_SECONDS = 10.0


def run_ui(root: str | Path, host: str, port: int) -> int:
    """`mlflow ui` on the workflow's store, in the foreground; returns its exit status
    (negative: the signal that stopped it).

    `mlflow ui` serves through uvicorn worker processes of its own. It runs in a process
    group of its own, and SIGTERM, SIGHUP or SIGINT sent to this process (by a scheduler, a
    service manager, `kill` or Ctrl-C) is passed to that whole group, so that no worker is
    left behind holding the port; whatever is left of the group when it ends is stopped too.
    """
    uri = tracking_uri(root)
    _check_store_exists(uri, f"run snakemake first, or set {URI_ENV}")
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri]
    ui = subprocess.Popen([*command, "--host", host, "--port", str(port)], start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        _signal_group(ui.pid, signum)

    stopping = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
    previous = {signum: signal.signal(signum, forward) for signum in stopping}
    try:
        return ui.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        _stop_group(ui.pid)


def _signal_group(group: int, signum: int) -> bool:
    """Send `signum` to process group `group`; False when no process of it is left."""
    try:
        os.killpg(group, signum)
    except ProcessLookupError:
        return False
    return True


def _stop_group(group: int) -> None:
    """SIGTERM to what is left of process group `group`, SIGKILL after UI_STOP_SECONDS."""
    if not _signal_group(group, signal.SIGTERM):
        return
    deadline = time.monotonic() + UI_STOP_SECONDS
    while time.monotonic() < deadline:
        if not _signal_group(group, 0):
            return
        time.sleep(0.1)
    _signal_group(group, signal.SIGKILL)


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= MAX_PARAM_LENGTH else text[: MAX_PARAM_LENGTH - 3] + "..."


def _check_store_exists(uri: str, hint: str) -> None:
    """Jobs must never create a SQLite store: concurrent first opens race in its migrations."""
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        raise HierpipeError(
            f"MLflow store {uri} does not exist; the workflow creates it before any job "
            f"(Snakefile onstart); {hint}"
        )


@contextmanager
def _store_errors(uri: str, what: str) -> Iterator[None]:
    from mlflow.exceptions import MlflowException

    try:
        yield
    except (MlflowException, OSError) as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise HierpipeError(f"MLflow store {uri}: cannot {what} ({first_line})") from error
