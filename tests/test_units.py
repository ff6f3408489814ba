import pytest

from proxistore.units import UnitError, format_duration, format_size, parse_duration, parse_size


@pytest.mark.parametrize("text,expected", [
    ("1MB", 1_000_000), ("1 MB", 1_000_000), ("512MiB", 512 * 1024 ** 2), ("1kB", 1000), ("1KiB", 1024),
    ("2GB", 2 * 10 ** 9), ("3GiB", 3 * 1024 ** 3), ("100", 100), ("100B", 100), (4096, 4096), ("1.5MB", 1_500_000),
])
def test_sizes_are_decimal_for_kB_MB_and_binary_for_KiB_MiB(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("bad", ["1 XB", "MB", "-1MB", -5, "1.0000001kB", True, 1.5, "1e6"])
def test_bad_sizes_are_refused_with_the_accepted_units(bad):
    with pytest.raises(UnitError):
        parse_size(bad)


@pytest.mark.parametrize("text,expected", [
    ("2ms", 0.002), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0), ("250us", 0.00025), (3, 3.0), ("1.5", 1.5),
])
def test_durations_parse_to_seconds(text, expected):
    assert parse_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("bad", ["2 weeks", "-1s", -1, "ms", False])
def test_bad_durations_are_refused(bad):
    with pytest.raises(UnitError):
        parse_duration(bad)


@pytest.mark.parametrize("n", [0, 1, 999, 1000, 1024, 1_000_000, 512 * 1024 ** 2, 123_456_789])
def test_formatted_sizes_parse_back_to_the_same_bytes(n):
    assert parse_size(format_size(n)) == n


@pytest.mark.parametrize("s", [0.002, 30.0, 300.0, 0.1, 3600.0, 0.00025, 1.5])
def test_formatted_durations_parse_back(s):
    assert parse_duration(format_duration(s)) == pytest.approx(s)
