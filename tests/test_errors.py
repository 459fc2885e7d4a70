"""canonstore.errors: the one line an error becomes inside another one."""

from canonstore.errors import SourceError, first_line


def test_first_line_keeps_canonstores_own_error_whole_and_cuts_a_librarys():
    """A wrapped source error ("cannot read steps ...: <it>") lost its advice, which comes after a path that
    can be long (a pytest worker's tmp folder cut 'write_empty_chunks=True' off)."""
    said = "/tmp/" + "deep/" * 80 + "era5.zarr: chunk t2m/c/3/0/0 is missing; rewrite it with write_empty_chunks=True"
    assert first_line(SourceError(said + "\nsecond line")) == said
    assert first_line(OSError(said + "\n" + "debug detail\n" * 40)) == said[:300]
    assert first_line(OSError("")) == "OSError"
