import pytest

from pipeline.sources.licenses import License, NoOpenLicense, UnknownLicense, attribution_line, normalize_license


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("CC-BY-NC", "cc-by-nc"),  # iNaturalist: no version in the export, none invented
        ("CC0", "cc0-1.0"),
        ("CC-BY-SA", "cc-by-sa"),
        ("CC-BY-NC-ND", "cc-by-nc-nd"),
        ("CC_BY_4_0", "cc-by-4.0"),  # GBIF enum
        ("CC0_1_0", "cc0-1.0"),
        ("CC_BY_NC_4_0", "cc-by-nc-4.0"),
        ("http://creativecommons.org/licenses/by-nc/4.0/legalcode", "cc-by-nc-4.0"),
        ("https://creativecommons.org/licenses/by-sa/3.0/deed.en", "cc-by-sa-3.0"),
        ("http://creativecommons.org/licenses/by/4.0", "cc-by-4.0"),
        ("http://creativecommons.org/publicdomain/zero/1.0/", "cc0-1.0"),
        ("https://creativecommons.org/publicdomain/mark/1.0/", "pdm-1.0"),
        ("cc-by-4.0", "cc-by-4.0"),
        ("CC BY-NC-SA 2.5", "cc-by-nc-sa-2.5"),
        ("unspecified", "unspecified"),
    ],
)
def test_normalize_known_codes(raw, code):
    assert normalize_license(raw).code == code


def test_license_urls():
    assert normalize_license("CC_BY_NC_4_0").url == "https://creativecommons.org/licenses/by-nc/4.0/"
    assert normalize_license("CC0").url == "https://creativecommons.org/publicdomain/zero/1.0/"
    assert normalize_license("unspecified").url is None


@pytest.mark.parametrize("raw", ["", None, "  ", "All rights reserved", "(c)"])
def test_no_open_license(raw):
    with pytest.raises(NoOpenLicense, match="no open license"):
        normalize_license(raw)


@pytest.mark.parametrize("raw", ["GPL-3.0", "cc-by-9.0", "http://example.org/my-license", "CC-BY-XX"])
def test_unknown_license_keeps_code(raw):
    with pytest.raises(UnknownLicense) as info:
        normalize_license(raw)
    assert info.value.code == raw
    assert raw in str(info.value)


def test_attribution_lines_follow_inaturalist_style():
    assert (
        attribution_line("Jane Doe", normalize_license("CC-BY-NC")) == "(c) Jane Doe, some rights reserved (CC BY-NC)"
    )
    assert attribution_line("Jane Doe", normalize_license("CC0")) == "Jane Doe, no rights reserved (CC0 1.0)"
    assert attribution_line(None, License("cc-by-4.0", None)) == "(c) unknown author, some rights reserved (CC BY 4.0)"
