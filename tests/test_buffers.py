"""Page-aligned host buffers (canonstore.buffers): the right shape and dtype, starting on a page boundary."""

import numpy as np
import pytest

from canonstore.buffers import PAGE, page_aligned_empty


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((32, 14, 64, 128), np.float32), ((3, 5, 7), np.float16), ((1,), np.uint8), ((0, 4), np.float64), ((), np.int32)],
)
def test_page_aligned_empty_has_the_shape_and_dtype_asked_for_and_starts_on_a_page(shape, dtype):
    for _ in range(4):  # whatever glibc hands out first, each one starts on a page
        out = page_aligned_empty(shape, dtype)
        assert out.shape == shape and out.dtype == dtype and out.flags.c_contiguous and out.flags.writeable
        assert out.nbytes == 0 or out.ctypes.data % PAGE == 0  # an empty array has no memory to place
        out[...] = 7  # every element is its own memory: writing all of them is read back
        np.testing.assert_array_equal(out, np.full(shape, 7, dtype))


def test_negative_dimensions_are_refused_as_numpy_refuses_them():
    for shape in ((-1, 4), (2, -2), (-3,)):
        with pytest.raises(ValueError, match="negative dimensions"):
            page_aligned_empty(shape, np.float32)
