"""A catalogue of bad inputs, one test each: every one is refused through the entry point a user
hits, with a one-line HierpipeError that names the culprit and what was expected, and without
leaving an output that looks complete.

 1. params with an unknown key: test_01_params_unknown_key
 2. params with a value of the wrong type: test_02_params_wrong_type
 3. params with an out-of-range value: test_03_params_out_of_range_value
 4. dataset with a missing image file: test_04_dataset_missing_file
 5. dataset with a corrupt file: test_05a_dataset_corrupt_image (a garbage JPEG),
    test_05b_dataset_corrupt_archive (a truncated .tgz)
 6. downloaded archive with a bad checksum: test_06_dataset_bad_checksum
 7. archive with a member escaping the target (.., absolute path, symlink):
    test_07_dataset_path_traversal_archive
 8. inconsistent hierarchy: test_08a_hierarchy_node_with_two_parents (hierarchy file),
    test_08b_hierarchy_class_is_an_inner_node (classes.parquet)
 9. embeddings Parquet of the wrong dimension at evaluation: test_09_embeddings_wrong_dimension
10. embeddings Parquet with NaN rows at evaluation: test_10_embeddings_nan_rows
11. checkpoint of another config on resume: test_11a_resume_checkpoint_shape_mismatch (same
    run config, other data: an error), test_11b_resume_checkpoint_of_other_config (another run
    config: never loaded, the run starts over)
12. torch file holding a pickled Python object, refused by torch.load(weights_only=True) and
    never executed: test_12a_torch_file_with_python_object (model file, backbone weights),
    test_12b_resume_checkpoint_with_python_object (resume: discarded, the run starts over)
13. YAML with a python-object tag, refused by safe_load: test_13_yaml_python_object_tag
"""

import copy
import logging
import shutil
import tarfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from conftest import REPO, TINY_PARAMS, write_yaml
from dataset_fixtures import add_member, pin_files
from http_server import serve_directory
from test_data_cub200 import CLASSES, HIERARCHY, _build_archive, _serve_files
from test_data_fetch import make_tar, tar_member
from test_run_steps import _config

from hierpipe.core.config import SplitConfig, read_run_config, read_yaml_mapping, validate_params
from hierpipe.core.errors import HierpipeError
from hierpipe.core.io import write_parquet_atomic
from hierpipe.data import cub200, make_split, prepare_dataset, read_classes
from hierpipe.data.tables import CLASSES_SCHEMA
from hierpipe.evaluation.embedding_files import (
    Embeddings,
    class_prototypes,
    representatives_table,
    write_embeddings,
)
from hierpipe.evaluation.evaluate import evaluate_run
from hierpipe.evaluation.export import export_embeddings
from hierpipe.models import EmbeddingNet
from hierpipe.train import engine
from hierpipe.train.artifacts import MODEL_FORMAT
from hierpipe.train.engine import train_run

SCHEMA = REPO / "workflow/schemas/params.schema.yaml"
CUB_MD5 = "md5:97eceeb196236b17998738112f37df78"  # the published archive's pinned digest


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The networks here are tiny: on a shared machine extra threads only wait for each other,
    # which turns a quarter-second epoch into ten seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def refused(call, *args, **kwargs) -> str:
    """The message of the HierpipeError that `call` raises, checked to be a single line."""
    with pytest.raises(HierpipeError) as error:
        call(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message, message
    return message


def engine_warnings(caplog) -> list[str]:
    """What the training engine warned about while `caplog` listened."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == engine.log.name and r.levelno >= logging.WARNING
    ]


def load_params(path):
    """A params file through hierpipe: safe YAML, then the schema check (defaults filled)."""
    return validate_params(read_yaml_mapping(path, "experiment params"), SCHEMA, str(path))


# --- 1-3: params ------------------------------------------------------------------------


def test_01_params_unknown_key(tiny_params, tmp_path):
    tiny_params["train"]["learning_rate"] = 0.1  # a misspelt lr, silently unused if accepted
    path = write_yaml(tiny_params, tmp_path / "params.yaml")
    message = refused(load_params, path)
    assert message.startswith(f"{path}: train: unknown key(s) ['learning_rate']; expected [")
    assert "'lr'" in message


def test_02_params_wrong_type(tiny_params, tmp_path):
    tiny_params["train"]["epochs"] = "ten"
    path = write_yaml(tiny_params, tmp_path / "params.yaml")
    assert refused(load_params, path) == f"{path}: train.epochs: 'ten' is not of type 'integer'"


def test_03_params_out_of_range_value(tiny_params, tmp_path):
    tiny_params["models"]["pa_hier"]["head"]["curvature"] = -1.0
    path = write_yaml(tiny_params, tmp_path / "params.yaml")
    message = refused(load_params, path)
    assert message == (
        f"{path}: models.pa_hier.head.curvature: -1.0 is less than or equal to the minimum of 0"
    )


# --- 4-8: datasets ----------------------------------------------------------------------


def _prepare_cub_from(mirror, monkeypatch, out) -> str:
    """The error of `hierpipe data prepare cub200` with the official files served from `mirror`
    (pinned to its own digests, so only what is wrong inside the files is found)."""
    with serve_directory(mirror) as server:
        pin_files(monkeypatch, cub200, mirror, server.url)
        return refused(prepare_dataset, "cub200", out)


def test_04_dataset_missing_file(tmp_path, monkeypatch):
    absent = f"{CLASSES[2]}/Sooty_Albatross_0000.jpg"  # listed in images.txt, not in the archive
    mirror, _ = _serve_files(tmp_path, missing=absent)
    out = tmp_path / "cub200"
    message = _prepare_cub_from(mirror, monkeypatch, out)
    assert f"{out}: 1 of 12 image(s) cannot be used" in message
    assert f"raw/CUB_200_2011/images/{absent} (missing)" in message
    assert "on_bad_image=skip" in message
    assert not (out / "samples.parquet").exists()


def test_05a_dataset_corrupt_image(tmp_path, monkeypatch):
    broken = f"{CLASSES[1]}/Laysan_Albatross_0001.jpg"  # a JPEG header, then garbage
    mirror, _ = _serve_files(tmp_path, corrupt=broken)
    out = tmp_path / "cub200"
    message = _prepare_cub_from(mirror, monkeypatch, out)
    assert f"{out}: 1 of 12 image(s) cannot be used" in message
    assert f"raw/CUB_200_2011/images/{broken} (cannot decode:" in message
    assert not (out / "samples.parquet").exists()


def test_05b_dataset_corrupt_archive(tmp_path):
    archive = tmp_path / "cub_copy.tgz"  # a local copy, under a name no checksum is pinned to
    _build_archive(archive)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    out = tmp_path / "cub200"
    message = refused(prepare_dataset, "cub200", out, source=str(archive))
    assert message.startswith(f"cannot extract {archive}: the archive is truncated or corrupt")
    assert message.endswith("delete it and obtain it again")
    assert list(out.iterdir()) == []  # no raw/, no half-filled staging directory


def test_06_dataset_bad_checksum(tmp_path):
    mirror, _ = _serve_files(tmp_path)  # a fixture archive: not the bytes the digest pins
    out = tmp_path / "cub200"
    with serve_directory(mirror) as server:
        message = refused(prepare_dataset, "cub200", out, source=server.url)
    assert message.startswith(
        f"checksum mismatch for {server.url}/CUB_200_2011.tgz: expected {CUB_MD5}, got md5:"
    )
    assert not (out / "raw").exists()
    assert list((out / "downloads").iterdir()) == []  # the unverified download was deleted


@pytest.mark.parametrize(
    ("name", "link", "problem"),
    [
        ("../evil.txt", None, "has a '..' component"),
        ("CUB_200_2011/../../evil.txt", None, "has a '..' component"),
        ("{tmp}/evil.txt", None, "has an absolute path"),
        ("CUB_200_2011/up", "../../..", "links to '../../..', outside the extraction directory"),
    ],
    ids=["parent", "nested-parent", "absolute", "symlink-out"],
)
def test_07_dataset_path_traversal_archive(tmp_path, name, link, problem):
    name = name.format(tmp=tmp_path)
    archive = make_tar(tmp_path / "cub_copy.tar", mode="w")  # good members first
    with tarfile.open(archive, "a") as tarred:
        if link is None:
            add_member(tarred, name, b"owned")
        else:
            tarred.addfile(tar_member(name, tarfile.SYMTYPE, link))
    out = tmp_path / "data" / "cub200"
    message = refused(prepare_dataset, "cub200", out, source=str(archive))
    assert message == (
        f"refusing to extract {archive}: member {name!r} {problem}; expected only files, "
        "directories and links that stay inside the target directory"
    )
    assert list(out.iterdir()) == []  # nothing extracted, not even the good members
    assert not list(tmp_path.rglob("evil.txt"))


def test_08a_hierarchy_node_with_two_parents(tmp_path, monkeypatch):
    mirror, _ = _serve_files(tmp_path)
    # the genus Phoebetria again, under a second family: one node, two parents (line 15)
    (mirror / "hierarchy_flat.txt").write_text(HIERARCHY + "---- Alcidae\n------ Phoebetria\n")
    out = tmp_path / "cub200"
    message = _prepare_cub_from(mirror, monkeypatch, out)
    assert message == (
        f"{out}/raw/hierarchy_flat.txt, line 15: node 'Phoebetria' appears twice; "
        "expected each node once, under one parent"
    )
    assert not (out / "samples.parquet").exists() and not (out / "classes.parquet").exists()


def test_08b_hierarchy_class_is_an_inner_node(data_root, tmp_path):
    root = tmp_path / "shapes"
    shutil.copytree(data_root / "shapes", root)
    tree = read_classes(root)
    ancestors = [list(path[:-1]) for path in tree.paths]
    ancestors[1] = list(tree.paths[0])  # class 1 below class 0, which then is no leaf
    table = pa.table(
        {
            "class_id": np.arange(tree.num_classes),
            "class_name": list(tree.classes),
            "ancestors": ancestors,
        },
        schema=CLASSES_SCHEMA,
    )
    pq.write_table(table, root / "classes.parquet")
    message = refused(make_split, root, "new", "by_image", {"train": 0.5, "test": 0.5}, 0)
    assert message.startswith(
        f"{root / 'classes.parquet'}: class 0 ({' > '.join(tree.paths[0])}) is also an "
        "internal node, an ancestor of class 1"
    )
    assert message.endswith("expected every class to be a leaf")
    assert not (root / "splits/new.parquet").exists()


# --- 9-10: evaluation -------------------------------------------------------------------


def _run_outputs(directory, num_classes: int, dim: int, nan_rows=()) -> tuple:
    """embeddings.parquet (two test samples per class, `dim` wide, `nan_rows` set to NaN) and
    a representatives.parquet of matching, finite class prototypes."""
    labels = np.repeat(np.arange(num_classes), 2)
    split = np.full(len(labels), "test", dtype=object)
    vectors = np.random.default_rng(0).standard_normal((len(labels), dim)).astype(np.float32)
    class_ids, prototypes, sources = class_prototypes(vectors, labels, split)
    vectors[list(nan_rows)] = np.nan
    embeddings = directory / "embeddings.parquet"
    write_embeddings(
        Embeddings(np.arange(len(labels)), split, labels, vectors, None, None), embeddings
    )
    representatives = directory / "representatives.parquet"
    table = representatives_table([("prototype", class_ids, prototypes, list(sources))])
    write_parquet_atomic(table, representatives)
    return embeddings, representatives


def test_09_embeddings_wrong_dimension(tiny_params, data_root, tmp_path):
    config = _config(tiny_params, data_root)  # embedding_dim 8
    classes = read_classes(config.data_dir).num_classes
    embeddings, representatives = _run_outputs(tmp_path, classes, dim=5)
    metrics = tmp_path / "metrics.json"
    message = refused(evaluate_run, config, embeddings, representatives, metrics)
    assert message == f"{embeddings}: embeddings have dimension 5; the run config says 8"
    assert not metrics.exists()


def test_10_embeddings_nan_rows(tiny_params, data_root, tmp_path):
    config = _config(tiny_params, data_root)
    classes = read_classes(config.data_dir).num_classes
    embeddings, representatives = _run_outputs(tmp_path, classes, dim=8, nan_rows=[3, 7])
    metrics = tmp_path / "metrics.json"
    message = refused(evaluate_run, config, embeddings, representatives, metrics)
    assert message == (
        f"{embeddings} column 'embedding': 2 row(s) with NaN/Inf (first: row 3); "
        "expected finite vectors"
    )
    assert not metrics.exists()


# --- 11-12: checkpoints and torch files -------------------------------------------------


def _prepare_shapes(root, **prepare) -> None:
    """The tiny shapes dataset and its split under `root`, with `prepare` overrides."""
    shapes = TINY_PARAMS["datasets"]["shapes"]
    prepare_dataset("shapes", root / "shapes", {**shapes["prepare"], **prepare})
    split = SplitConfig(**shapes["split"])
    make_split(root / "shapes", split.name, split.scheme, split.fractions, split.seed)


def _checkpoint_after_one_epoch(config, run, monkeypatch) -> None:
    """Train `config` in `run` until its first checkpoint is written, then die like a kill."""
    real_save = engine._save_checkpoint

    def save_then_die(*args):
        real_save(*args)
        raise KeyboardInterrupt("simulated kill")

    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(engine, "_save_checkpoint", save_then_die)
        train_run(config, run / "model.pt", run / "log.parquet", run / "checkpoint")
    assert (run / "checkpoint/last.pt").is_file() and not (run / "model.pt").exists()


def test_11a_resume_checkpoint_shape_mismatch(tiny_params, tmp_path, monkeypatch):
    # The run config names the data directory, not how the data was prepared: re-prepared
    # with 12 classes instead of 8, the data gets the same run config, and the checkpoint
    # of the interrupted 8-class run looks like this run's own.
    data = tmp_path / "data"
    _prepare_shapes(data)
    config = _config(tiny_params, data, epochs=2)
    run = tmp_path / "run"
    _checkpoint_after_one_epoch(config, run, monkeypatch)
    _prepare_shapes(data, species_per_genus=3)
    message = refused(train_run, config, run / "model.pt", run / "log.parquet", run / "checkpoint")
    assert message.startswith(
        f"{run / 'checkpoint/last.pt'}: checkpoint does not fit the configured model ("
    )
    assert (
        "size mismatch for loss.proxies: copying a param with shape torch.Size([8, 8]) from "
        "checkpoint, the shape in current model is torch.Size([12, 8])"
    ) in message
    assert not (run / "model.pt").exists() and not (run / "log.parquet").exists()


def test_11b_resume_checkpoint_of_other_config(
    tiny_params,
    data_root,
    tmp_path,
    monkeypatch,
    caplog,
):
    # A checkpoint that records another run config (here a 16-wide embedding) is never
    # loaded: the run starts over, saying why, and ends with this config's shapes.
    other_params = copy.deepcopy(tiny_params)
    other_params["backbone"]["embedding_dim"] = 16
    other = _config(other_params, data_root, epochs=2)
    run = tmp_path / "run"
    _checkpoint_after_one_epoch(other, run, monkeypatch)
    config = _config(tiny_params, data_root, epochs=1)
    with caplog.at_level(logging.WARNING, logger=engine.log.name):
        train_run(config, run / "model.pt", run / "log.parquet", run / "checkpoint")
    warnings = engine_warnings(caplog)
    assert warnings == [
        f"{run / 'checkpoint/last.pt'}: checkpoint is from another config; starting from scratch"
    ]
    model = torch.load(run / "model.pt", weights_only=True)
    assert model["net"]["head.weight"].shape[0] == 8


class _OpensAFile:
    """Unpickled, this calls open(path, "w"): the file existing proves a loader ran it."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def _export(path, tmp_path):
    export_embeddings(path, tmp_path / "embeddings.parquet", tmp_path / "representatives.parquet")


def _backbone(path, tmp_path):
    EmbeddingNet("test_resnet", 8, head="sphere", pretrained=True, weights=path)


@pytest.mark.parametrize(
    ("load", "what"),
    [
        (_export, "cannot read model file"),  # hierpipe embed --model
        (_backbone, "cannot read backbone weights file"),  # backbone.weights in params
    ],
    ids=["model", "backbone-weights"],
)
def test_12a_torch_file_with_python_object(tmp_path, load, what):
    sentinel = tmp_path / "code-ran"
    path = tmp_path / "untrusted.pt"
    torch.save({"format": MODEL_FORMAT, "net": _OpensAFile(sentinel)}, path)
    message = refused(load, path, tmp_path)
    assert what in message and str(path) in message
    culprit = f"{open.__module__}.open"  # the global the pickle would call
    assert f"(it holds the Python object {culprit}, where only tensors and plain" in message
    assert "weights_only=False" not in message  # torch's advice, which would run the code
    assert not sentinel.exists()
    assert not (tmp_path / "embeddings.parquet").exists()


def test_12b_resume_checkpoint_with_python_object(
    tiny_params,
    data_root,
    tmp_path,
    caplog,
):
    sentinel = tmp_path / "code-ran"
    checkpoint = tmp_path / "run/checkpoint/last.pt"
    checkpoint.parent.mkdir(parents=True)
    torch.save({"config": {}, "net": _OpensAFile(sentinel)}, checkpoint)
    config = _config(tiny_params, data_root, epochs=1)
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger=engine.log.name):
        train_run(config, run / "model.pt", run / "log.parquet", run / "checkpoint")
    (warning,) = engine_warnings(caplog)
    assert "\n" not in warning
    assert warning.startswith(f"{checkpoint}: cannot read training checkpoint (it holds the")
    assert warning.endswith("; starting from scratch")
    assert not sentinel.exists()
    assert (run / "model.pt").is_file()  # trained afresh instead


# --- 13: YAML ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("load", "what"),
    [(load_params, "experiment params"), (read_run_config, "run settings")],
    ids=["params", "run-config"],
)
def test_13_yaml_python_object_tag(tmp_path, load, what):
    sentinel = tmp_path / "code-ran"
    path = tmp_path / "settings.yaml"
    path.write_text(
        f"experiment: tiny\ntrain: !!python/object/apply:os.system ['touch {sentinel}']\n"
    )
    message = refused(load, path)
    assert message == (
        f"{path}: not valid YAML (could not determine a constructor for the tag "
        "'tag:yaml.org,2002:python/object/apply:os.system' at line 2, column 8); "
        f"expected {what} as plain YAML"
    )
    assert not sentinel.exists()
