"""leaderboard.svg: the charts parse as XML, their points map back to the data, and labels are escaped."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET

import pytest
from markupsafe import Markup

from leaderboard.svg import ecdf_chart, line_chart

NS = "{http://www.w3.org/2000/svg}"


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(str(svg))
    for el in root.iter():  # drop the SVG namespace so tests can name plain tags
        el.tag = el.tag.removeprefix(NS)
    return root


class Mapping:
    """Pixel <-> data mapping read back from the attributes the root declares."""

    def __init__(self, root: ET.Element) -> None:
        self.left, self.top, self.right, self.bottom = map(float, root.get("data-plot", "").split())
        self.x0, self.x1 = map(float, root.get("data-x-domain", "").split())
        self.y0, self.y1 = map(float, root.get("data-y-domain", "").split())
        self.log = root.get("data-x-scale") == "log"

    def data_x(self, px: float) -> float:
        t = (px - self.left) / (self.right - self.left)
        if self.log:
            return 10 ** (math.log10(self.x0) + t * (math.log10(self.x1) - math.log10(self.x0)))
        return self.x0 + t * (self.x1 - self.x0)

    def data_y(self, py: float) -> float:
        return self.y0 + (self.bottom - py) / (self.bottom - self.top) * (self.y1 - self.y0)


def line_points(root: ET.Element, name: str) -> list[tuple[float, float]]:
    (line,) = [el for el in root.iter() if el.get("data-series") == name]
    m = Mapping(root)
    pts = [tuple(map(float, p.split(","))) for p in line.get("points", "").split()]
    return [(m.data_x(x), m.data_y(y)) for x, y in pts]


def close(a: list[tuple[float, float]], b: list[tuple[float, float]], rel: float = 2e-3) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, u, rel_tol=rel, abs_tol=1e-3) and math.isclose(y, v, rel_tol=rel, abs_tol=0.05)
        for (x, y), (u, v) in zip(a, b, strict=True))


EPS_DATA = [
    ("fgsm", [(0.1, 90.0), (0.2, 60.0), (0.3, 35.0), (0.4, 20.0)]),
    ("pgd-cw", [(0.1, 80.0), (0.2, 30.0), (0.3, 10.0), (0.4, 0.0)]),
]


def test_line_chart_points_map_back_to_the_data() -> None:
    svg = line_chart(EPS_DATA, x_label="eps", y_label="accuracy (%)", title="Accuracy vs eps", data_curve="eps")
    assert isinstance(svg, Markup)
    root = parse(svg)
    assert root.tag == "svg" and root.get("class") == "curve" and root.get("data-curve") == "eps"
    assert root.get("role") == "img" and root.get("viewBox") == "0 0 440 260"
    assert (root.get("width"), root.get("height")) == ("440", "260")
    assert root.find("title").text == "Accuracy vs eps"
    for name, pts in EPS_DATA:
        assert close(line_points(root, name), pts), name
    lines = [el for el in root.iter("polyline")]
    assert len({el.get("stroke") for el in lines}) == 2  # distinct colours
    assert len(list(root.iter("circle"))) == 8  # a marker per point
    legend = [t.text for t in root.find("g[@class='legend']").iter("text")]
    assert legend == ["fgsm", "pgd-cw"]


def test_axes_and_ticks_agree_with_the_mapping() -> None:
    root = parse(line_chart(EPS_DATA, x_label="eps (L-inf)", y_label="accuracy (%)", title="t", data_curve="eps"))
    m = Mapping(root)
    assert (m.y0, m.y1) == (0.0, 100.0)  # the fixed y range
    assert root.find(".//line[@class='axis x-axis']") is not None
    assert root.find(".//line[@class='axis y-axis']") is not None
    assert root.find(".//text[@class='x-label']").text == "eps (L-inf)"
    assert root.find(".//text[@class='y-label']").text == "accuracy (%)"
    for axis, inv in (("x", m.data_x), ("y", m.data_y)):
        ticks = root.findall(f".//g[@class='tick {axis}-tick']")
        assert 3 <= len(ticks) <= 8, axis
        for t in ticks:
            value = float(t.get("data-value"))
            assert float(t.find("text").text) == pytest.approx(value)
            line = t.find("line")
            pos = float(line.get("x1" if axis == "x" else "y1"))
            assert inv(pos) == pytest.approx(value, abs=1e-3 * (abs(value) + 1))
    xs = [float(t.get("data-value")) for t in root.findall(".//g[@class='tick x-tick']")]
    assert xs == pytest.approx([0.1, 0.2, 0.3, 0.4])
    ys = [float(t.get("data-value")) for t in root.findall(".//g[@class='tick y-tick']")]
    assert ys == pytest.approx([0, 20, 40, 60, 80, 100])


def test_log_x_axis_and_auto_y_range() -> None:
    data = [("pgd", [(10.0, 0.52), (20.0, 0.4), (40.0, 0.35), (80.0, 0.34), (160.0, 0.34)])]
    root = parse(line_chart(data, x_label="steps", y_label="loss", title="t", data_curve="steps", x_log=True,
                            y_range=None))
    m = Mapping(root)
    assert m.log and m.x0 <= 10 and m.x1 >= 160 and m.y0 <= 0.34 and m.y1 >= 0.52 and m.y1 < 1
    assert close(line_points(root, "pgd"), data[0][1])
    xs = [float(t.get("data-value")) for t in root.findall(".//g[@class='tick x-tick']")]
    assert xs == [10.0, 20.0, 50.0, 100.0, 200.0]
    # equal spacing per decade: 10 -> 100 spans as many pixels as 20 -> 200
    ticks = root.findall(".//g[@class='tick x-tick']")
    px = {float(t.get("data-value")): float(t.find("line").get("x1")) for t in ticks}
    assert px[100.0] - px[10.0] == pytest.approx(px[200.0] - px[20.0], abs=0.02)


def test_y_range_widens_for_data_outside_it() -> None:
    root = parse(line_chart([("a", [(0.0, -5.0), (1.0, 120.0)])], x_label="x", y_label="y", title="t",
                            data_curve="c"))
    m = Mapping(root)
    assert m.y0 <= -5 and m.y1 >= 120
    assert close(line_points(root, "a"), [(0.0, -5.0), (1.0, 120.0)])


def test_labels_are_escaped() -> None:
    evil = '<script>alert(1)</script>"&\''
    svg = line_chart([(evil, [(0.1, 50.0)])], x_label=evil, y_label=evil, title=evil, data_curve=evil)
    assert "<script>" not in svg
    root = parse(svg)  # still well-formed XML
    assert root.get("data-curve") == evil and root.get("aria-label") == evil
    assert root.find("title").text == evil
    assert root.find(".//text[@class='x-label']").text == evil
    assert [el.get("data-series") for el in root.iter("polyline")] == [evil]
    assert not list(root.iter("script"))
    ecdf = ecdf_chart([(evil, [1.0, 2.0])], x_label=evil, title=evil, data_curve=evil)
    assert "<script>" not in ecdf and parse(ecdf).find("title").text == evil


def test_nan_and_infinite_points_are_skipped() -> None:
    nan = float("nan")
    data = [("a", [(0.1, 80.0), (0.2, nan), (nan, 10.0), (0.3, float("inf")), (0.4, 20.0)])]
    root = parse(line_chart(data, x_label="x", y_label="y", title="t", data_curve="c"))
    assert close(line_points(root, "a"), [(0.1, 80.0), (0.4, 20.0)])
    assert len(list(root.iter("circle"))) == 2
    assert "nan" not in str(line_chart(data, x_label="x", y_label="y", title="t", data_curve="c")).lower()


@pytest.mark.parametrize("series", [[], [("a", [])], [("a", [(float("nan"), 1.0)])]])
def test_empty_data_says_no_data(series: list) -> None:
    svg = line_chart(series, x_label="x", y_label="y", title="Nothing", data_curve="eps")
    root = parse(svg)
    assert root.get("class") == "curve" and root.get("data-curve") == "eps"
    assert root.find(".//text[@class='no-data']").text == "no data"
    assert not list(root.iter("polyline"))
    assert parse(ecdf_chart([("a", [])], x_label="x", title="t", data_curve="d")).find(
        ".//text[@class='no-data']") is not None


def test_ecdf_steps_are_the_empirical_cdf() -> None:
    values = [0.5, 1.2, 1.3, 2.0, 2.0, float("inf"), float("nan")]  # inf: not found (counts), nan: skipped
    root = parse(ecdf_chart([("cw-l2", values), ("fab", [0.9, 0.7])], x_label="L2", title="t", data_curve="ecdf"))
    m = Mapping(root)
    assert (m.y0, m.y1) == (0.0, 100.0)
    lo, hi = m.x0, m.x1
    assert lo <= 0.5 and hi >= 2.0
    n = 6
    want = [(lo, 0.0), (0.5, 0.0), (0.5, 100 / n), (1.2, 100 / n), (1.2, 200 / n), (1.3, 200 / n),
            (1.3, 300 / n), (2.0, 300 / n), (2.0, 500 / n), (hi, 500 / n)]
    assert close(line_points(root, "cw-l2"), want)
    assert close(line_points(root, "fab"), [(lo, 0.0), (0.7, 0.0), (0.7, 50.0), (0.9, 50.0), (0.9, 100.0),
                                            (hi, 100.0)])
    ys = [y for _, y in line_points(root, "cw-l2")]
    assert ys == sorted(ys)  # a CDF never decreases


def test_ecdf_log_axis_starts_at_the_share_below_it() -> None:
    root = parse(ecdf_chart([("l0", [0.0, 3.0, 30.0, 300.0])], x_label="L0", title="t", data_curve="l0",
                            x_log=True))
    m = Mapping(root)
    assert m.log
    got = line_points(root, "l0")
    assert got[0][1] == pytest.approx(25.0, abs=0.05)  # the zero distance sits left of a log axis
    assert close(got[1:-1], [(3.0, 25.0), (3.0, 50.0), (30.0, 50.0), (30.0, 75.0), (300.0, 75.0), (300.0, 100.0)])
