import pytest

from phenoica.errors import InputError
from phenoica.identifiers import check_identifier, normalize_well, row_index, row_letters, well_name


@pytest.mark.parametrize("raw,expected", [("c3", "C03"), ("C03", "C03"), ("C003", "C03"),
                                          (" c 3 ", "C03"), ("AF48", "AF48"), ("P24", "P24")])
def test_normalize_well(raw, expected):
    assert normalize_well(raw) == expected


@pytest.mark.parametrize("raw", ["", "3C", "C", "C0", "row3", "C-3"])
def test_normalize_well_rejects(raw):
    with pytest.raises(InputError, match="well"):
        normalize_well(raw, source="map.csv")


def test_rows_round_trip():
    for i in range(1, 60):
        assert row_index(row_letters(i)) == i
    assert well_name(32, 48) == "AF48"


@pytest.mark.parametrize("bad", ["a/b", "../x", ".", "-x", "a b", "", "p\\1", "ä"])
def test_check_identifier_rejects(bad):
    with pytest.raises(InputError, match="not a valid identifier") as info:
        check_identifier(bad, "plate", source="plates.tsv")
    assert "plates.tsv" in str(info.value)


def test_check_identifier_accepts():
    assert check_identifier("BR00143976_v1.2-x", "plate") == "BR00143976_v1.2-x"
