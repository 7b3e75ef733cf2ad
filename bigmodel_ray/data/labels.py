"""Stored labels -> class ids in [0, num_classes), and why a label is not one.

A label that is missing, not a whole number, or outside the classes is a bad record
(`data.on_bad_record`): cast unchecked, "3" would pass as 3 and a null as a huge negative id.
"""

import numpy as np


def class_id(value, num_classes: int | None) -> tuple[int, str | None]:
    """(the class id, None) or (-1, why `value` is not a class id)."""
    value = value.item() if isinstance(value, np.generic) else value
    if value is None or isinstance(value, float) and value != value:     # null, NaN
        return -1, "no label"
    if isinstance(value, bool) or not isinstance(value, int | float) or value % 1:
        return -1, f"label {value!r} is not an integer class id"
    if not 0 <= value < (num_classes if num_classes is not None else 2**63):
        classes = f" (0..{num_classes - 1})" if num_classes is not None else ""
        return -1, f"label {int(value)} is not a class id{classes}"
    return int(value), None


def class_ids(values, num_classes: int | None) -> tuple[np.ndarray, dict[int, str]]:
    """int64 class ids (-1 where bad) and {row: why} for the rows whose label is not one."""
    values = np.asarray(values)
    if values.dtype.kind in "iu":          # the usual column: checked as a whole
        bad = (values < 0) | (values >= (num_classes if num_classes is not None else 2**63))
        ids = values.astype(np.int64)
        ids[bad] = -1
        return ids, {int(i): class_id(values[i], num_classes)[1] for i in np.flatnonzero(bad)}
    ids, problems = np.full(len(values), -1, np.int64), {}
    for i, value in enumerate(values):     # nulls (float NaN or None), strings, floats
        ids[i], problem = class_id(value, num_classes)
        if problem:
            problems[i] = problem
    return ids, problems
