"""Splits named by a column of the data (`data.split_column`) instead of a row hash."""

from dataclasses import dataclass

from bigmodel_ray.data.sources import SPLITS, DataError, split_shares

# What a split column may say (compared lower-cased): published sets name their splits these ways.
SPLIT_NAMES = {"train": ("train", "training"), "val": ("val", "valid", "validation", "dev"), "test": ("test", "testing")}


def column_splits(spec, counts: dict[str, int]) -> tuple[dict, dict, dict]:
    """Splits from a column of split names (`data.split_column`), given how many rows carry each
    value: (split -> the values it keeps, split -> [lo, hi) of hash share or None, split -> rows).
    Without val rows, val is carved from train by hash (`data.val_fraction`), as for files."""
    counts = {str(k).lower(): n for k, n in counts.items()}
    known = {v for names in SPLIT_NAMES.values() for v in names}
    unknown = sorted(set(counts) - known)
    if unknown:
        raise DataError("split_column", f"column {spec.split_column!r} has values {', '.join(map(repr, unknown[:5]))}; "
                                        f"expected {' / '.join(n[0] for n in SPLIT_NAMES.values())} (or "
                                        f"{', '.join(sorted(known - {n[0] for n in SPLIT_NAMES.values()}))})")
    values = {name: tuple(v for v in names if v in counts) for name, names in SPLIT_NAMES.items()}
    rows = {name: sum(counts[v] for v in vs) for name, vs in values.items()}
    for name in ("train", "test"):
        if not rows[name]:
            raise DataError("split_column", f"column {spec.split_column!r} marks no {name} rows")
    shares = dict.fromkeys(SPLITS)
    if not rows["val"]:
        values["val"] = values["train"]
        shares["val"], shares["train"] = (0.0, spec.val_fraction), (spec.val_fraction, 1.0)
        rows["val"], rows["train"] = round(rows["train"] * spec.val_fraction), round(rows["train"] * (1 - spec.val_fraction))
    return values, shares, rows


def split_counts(dataset, column: str, where: str) -> dict[str, int]:
    """How many rows carry each value of the split column (one narrow read, no Ray)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = (dataset.schema if hasattr(dataset, "schema") else dataset.physical_schema).names
    if column not in names:
        raise DataError("split_column", f"column {column!r} is not in {where} (columns: {', '.join(names)})")
    values = pc.cast(dataset.to_table(columns=[column]).column(0), pa.string())
    return {str(row["values"]): row["counts"] for row in pc.value_counts(values).to_pylist()}


def rows_of_split(batch, column: str, values: tuple[str, ...]):
    """map_batches (pyarrow): the rows whose split column names one of `values` (any case)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    names = pc.utf8_lower(pc.cast(batch[column], pa.string()))
    return batch.filter(pc.fill_null(pc.is_in(names, value_set=pa.array(values)), False))



@dataclass(frozen=True)
class SplitRows:
    """The stored rows a split reads: those whose split column names one of `values` (None: every
    row), then those whose key hashes into `share`; `rows` of them (estimated for hash splits)."""
    values: tuple[str, ...] | None
    share: tuple[float, float]
    rows: int


def text_splits(spec, total: int, counts: dict[str, int] | None) -> dict[str, SplitRows]:
    """Each split's rows of a text source: by the split column (`counts`: rows per value), else by
    row hash (`total` rows)."""
    if spec.split_column is None:
        return {name: SplitRows(None, (lo, hi), round(total * (hi - lo))) for name, (lo, hi) in split_shares(spec).items()}
    values, shares, rows = column_splits(spec, counts)
    return {name: SplitRows(values[name], shares[name] or (0.0, 1.0), rows[name]) for name in SPLITS}
