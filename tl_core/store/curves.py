"""The run_curves row: every epoch's metrics of one run as one float64 (epochs x keys) matrix.

The narrow epoch_metrics table stays the record; this copy, written in the same transaction,
lets a comparison of 500 runs read 500 rows instead of 700,000. A metric an epoch lacks (or a
NaN, a diverged loss) is NaN in the matrix and absent from the epoch as it is read back.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import cast

import numpy as np
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from .tables import SqlRunCurves


class EpochRow(Mapping[str, float]):
    """One epoch's metrics, read from its run's curves row (a numpy row) as they are asked for:
    {key: value}, leaving out the NaNs (metrics that epoch lacks). A 500-run comparison reads a
    few keys of each epoch; making a float and a dict entry of every key of every epoch first cost
    it most of its load time. Reads as a Mapping; pickles as a dict."""

    __slots__ = ("_index", "_values")

    def __init__(self, index: dict[str, int], values: np.ndarray):
        self._index, self._values = index, values

    def __getitem__(self, key: str) -> float:
        value = float(self._values[self._index[key]])
        if value != value:
            raise KeyError(key)
        return value

    def __contains__(self, key: object) -> bool:
        i = self._index.get(cast(str, key))  # dict.get takes any key: one that is no str is not there
        return i is not None and not math.isnan(self._values[i])

    def __iter__(self) -> Iterator[str]:
        present = ~np.isnan(self._values)
        return (k for k, i in self._index.items() if present[i])

    def __len__(self) -> int:
        return int((~np.isnan(self._values)).sum())

    def __repr__(self) -> str:
        return repr(dict(self))

    def __reduce__(self):  # pickled (Streamlit's caches) as the plain dict it reads as
        return dict, (dict(self),)


def narrow_rows(run_id: int, epochs: dict[int, dict[str, float]]) -> list[dict]:
    """epoch_metrics rows of `epochs`, leaving out NaN (a diverged loss): a value the narrow table
    cannot hold on SQLite (NULL), and one the curves already read as absent."""
    return [
        {"run_id": run_id, "epoch": e, "key": k, "value": float(v)}
        for e, metrics in epochs.items()
        for k, v in metrics.items()
        if not math.isnan(float(v))
    ]


def curve_epochs(keys: list[str], epochs: list[int], matrix: bytes) -> dict[int, Mapping[str, float]]:
    """{epoch: {key: value}} from a curves row (each epoch's row read as it is asked for)."""
    index = {k: i for i, k in enumerate(keys)}
    values = np.frombuffer(matrix, dtype="<f8").reshape(len(epochs), len(keys))
    return {e: EpochRow(index, row) for e, row in zip(epochs, values)}


def add_to_curves(s: Session | Connection, run_id: int, epochs: dict[int, dict[str, float]]) -> None:
    """Put `epochs` into the run's curves row (an epoch recorded again replaces its row)."""
    c = SqlRunCurves
    row = s.execute(select(c.keys, c.epochs, c.matrix).where(c.run_id == run_id)).first()
    keys, rows = (
        ([], {})
        if row is None
        else (
            list(row.keys),
            dict(
                zip(row.epochs, np.frombuffer(row.matrix, dtype="<f8").reshape(len(row.epochs), len(row.keys)).tolist())
            ),
        )
    )
    for epoch, metrics in epochs.items():
        keys += [k for k in metrics if k not in keys]
        rows[epoch] = [float(metrics[k]) if k in metrics else math.nan for k in keys]
    order = sorted(rows)
    values = {
        "keys": keys,
        "epochs": order,
        "matrix": np.array([rows[e] + [math.nan] * (len(keys) - len(rows[e])) for e in order], dtype="<f8").tobytes(),
    }
    if row is None:
        s.execute(insert(c).values(run_id=run_id, **values))
    else:
        s.execute(update(c).where(c.run_id == run_id).values(**values))
