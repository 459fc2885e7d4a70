"""NumPy's indexing rules, read off a key, for arrays that index like NumPy without being one (`ShardedArray`).

>>> index_parts(([3, 5], 1), (10, 3, 4))                # array-likes become arrays
(array([3, 5]), 1)
>>> index_parts(np.array([True, False, True]), (3, 2))  # a boolean array is its nonzero()
(array([0, 2]),)
"""

from __future__ import annotations

import numpy as np


def is_basic(part) -> bool:
    """NumPy's basic indices: a slice, None, Ellipsis or an integer (not a bool)."""
    return (
        part is None
        or part is Ellipsis
        or isinstance(part, slice)
        or (isinstance(part, (int, np.integer)) and not isinstance(part, (bool, np.bool_)))
    )


def takes_no_axis(part) -> bool:
    """None, Ellipsis and boolean scalars index no axis of the array."""
    return part is None or part is Ellipsis or (isinstance(part, np.ndarray) and part.dtype == bool and part.ndim == 0)


def broadcast_shape(arrays: list[np.ndarray]) -> tuple[int, ...]:
    """The shape index arrays broadcast to (a boolean array counts as its nonzero(): True as (1,), False (0,))."""
    shapes = [(int(np.count_nonzero(a)),) if a.dtype == bool else a.shape for a in arrays]
    try:
        return np.broadcast_shapes(*shapes)
    except ValueError:
        raise IndexError(
            "shape mismatch: indexing arrays could not be broadcast together with shapes " + " ".join(map(str, shapes))
        ) from None


def index_parts(key, shape: tuple[int, ...]) -> tuple:
    """`key` as NumPy reads it: a tuple in which array-likes are arrays (an empty list an int array), a boolean
    array over several axes its nonzero() (NumPy's own equivalence), and some part indexing the first axis (an
    Ellipsis that covers it starts with `slice(None)`, and a key indexing no axis gets a trailing one)."""
    parts = []
    for part in key if isinstance(key, tuple) else (key,):
        if not is_basic(part):
            array = np.asarray(part)
            part = array.astype(np.intp) if array.size == 0 and not isinstance(part, np.ndarray) else array
        parts.append(part)
    if sum(p is Ellipsis for p in parts) > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    width = [0 if takes_no_axis(p) else p.ndim if isinstance(p, np.ndarray) and p.dtype == bool else 1 for p in parts]
    if sum(width) > len(shape):
        raise IndexError(
            f"too many indices for array: array is {len(shape)}-dimensional, but {sum(width)} were indexed"
        )
    for i, part in enumerate(parts):
        if part is Ellipsis and sum(width) < len(shape):
            parts.insert(i, slice(None))
            break
        if width[i]:
            if isinstance(part, np.ndarray) and part.dtype == bool:
                for axis, (size, given) in enumerate(zip(shape, part.shape)):
                    if given and size != given:  # NumPy checks no boolean axis of length 0 (legacy): [] is empty
                        raise IndexError(
                            f"boolean index did not match indexed array along axis {axis}; size of axis "
                            f"is {size} but size of corresponding boolean axis is {given}"
                        )
                parts[i : i + 1] = part.nonzero()
            break
    else:
        parts.append(slice(None))
    return tuple(parts)
