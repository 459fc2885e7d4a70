"""README's "Training config" table, configs/default.yaml and the code's defaults say the same thing."""

from canonstore.training.config import load_config
from canonstore.training.config_reference import MEANINGS, flat_defaults, reference_table
from tests.helpers import ROOT


def test_every_key_has_a_meaning_and_nothing_else_does():
    assert list(MEANINGS) == list(flat_defaults())


def test_readme_carries_the_table_generated_from_the_code():
    readme = (ROOT / "README.md").read_text()
    header, _, *rows = reference_table().splitlines()
    three_cells = [row.count(" | ") == 2 and row.startswith("| ") and row.endswith(" |") for row in [header, *rows]]
    assert all(three_cells)
    assert reference_table() in readme, (
        "README's Training config table is stale: python -m canonstore.training.config_reference"
    )


def test_the_default_config_file_repeats_the_codes_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == load_config(None)
