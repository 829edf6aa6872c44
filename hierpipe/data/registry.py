"""Dataset builders: the base class, and the builder of a name in hierpipe.core.catalog.

Adding a dataset = one module defining a ``DatasetBuilder`` plus one entry in
``hierpipe.core.catalog.DATASETS``.
"""

from __future__ import annotations

import dataclasses
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

from hierpipe.core.catalog import DATASETS, lookup
from hierpipe.core.errors import HierpipeError
from hierpipe.data.fetch import DownloadError

OptionValue = str | int | float | bool


class DatasetBuilder(ABC):
    """Recipe for one dataset: its prepare options and how to write the tables from a source.

    Subclasses define a nested frozen dataclass ``Options`` (fields of type bool, int, float or
    str, with defaults; ``__post_init__`` validates values) and ``prepare``, which writes
    ``samples.parquet`` (last, so its presence marks a complete dataset), ``classes.parquet``
    and the files they reference under ``out_dir``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type]
    # What a mirror or a hand download holds, said when the official download fails.
    source_layouts: ClassVar[str] = ""

    @abstractmethod
    def prepare(self, out_dir: Path, options: Any, source: str | None) -> None:
        """Write the dataset under ``out_dir`` from ``source`` (URL or local directory)."""


def get_dataset(name: str) -> DatasetBuilder:
    """The builder of dataset ``name`` (hierpipe.core.catalog.DATASETS)."""
    builder = lookup(DATASETS, name, "dataset").load()
    options = getattr(builder, "Options", None)
    if not (dataclasses.is_dataclass(options) and options.__dataclass_params__.frozen):
        raise HierpipeError(f"dataset {name!r}: Options must be a frozen dataclass")
    instance = builder()
    instance.name = name
    return instance


def check_choice(dataset: str, key: str, value: str, accepted: tuple[str, ...]) -> None:
    """Raise, naming the dataset and option, unless `value` is one of `accepted`."""
    if value not in accepted:
        raise HierpipeError(
            f"dataset {dataset!r}: {key}={value!r}; expected one of {', '.join(accepted)}"
        )


def _parse_bool(text: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if text.strip().lower() not in words:
        raise ValueError(text)
    return words[text.strip().lower()]


_PARSERS: dict[type, Callable[[str], Any]] = {bool: _parse_bool, int: int, float: float, str: str}
# Non-string values accepted as they are; int widens to float, but bool is never a number.
_ACCEPTED: dict[type, tuple[type, ...]] = {bool: (bool,), int: (int,), float: (int, float), str: ()}


def _convert(where: str, key: str, value: OptionValue, kind: type) -> Any:
    if kind not in _PARSERS:
        raise HierpipeError(f"{where}: option {key!r} has unsupported type {kind!r}")
    if isinstance(value, str):
        try:
            return _PARSERS[kind](value)
        except ValueError:
            pass
    elif isinstance(value, _ACCEPTED[kind]) and (isinstance(value, bool) == (kind is bool)):
        return kind(value)
    raise HierpipeError(f"{where}: option {key}={value!r} is not a valid {kind.__name__}")


def parse_options(
    builder: DatasetBuilder | type[DatasetBuilder], overrides: Mapping[str, OptionValue]
) -> Any:
    """Build ``builder.Options`` from defaults and ``overrides`` (strings are converted)."""
    where = f"dataset {builder.name!r}"
    hints = typing.get_type_hints(builder.Options)
    kinds = {field.name: hints[field.name] for field in dataclasses.fields(builder.Options)}
    unknown = sorted(set(overrides) - set(kinds))
    if unknown:
        raise HierpipeError(
            f"{where}: unknown option(s) {', '.join(unknown)}; accepted: {', '.join(kinds)}"
        )
    values = {key: _convert(where, key, value, kinds[key]) for key, value in overrides.items()}
    return builder.Options(**values)


def prepare_dataset(
    name: str,
    out_dir: str | Path,
    overrides: Mapping[str, OptionValue] | None = None,
    source: str | None = None,
) -> Any:
    """Prepare dataset ``name`` under ``out_dir``; returns the resolved options."""
    builder = get_dataset(name)
    options = parse_options(builder, overrides or {})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        builder.prepare(out_dir, options, source)
    except DownloadError as error:
        layouts = f" ({builder.source_layouts})" if builder.source_layouts else ""
        raise HierpipeError(
            f"dataset {name!r}: {error}. Get its files from a mirror or by hand and pass "
            f"--source (a URL, an archive or a directory{layouts}; in params: "
            f"datasets.{name}.source)"
        ) from error
    return options
