"""The index's version-by-version table: versions of one protocol side by side, never another family."""

from __future__ import annotations

from types import SimpleNamespace

from leaderboard.build import compare_protocols, protocol_family


def _summary(run_id: int, entry: str, protocol: str, worst: float, dataset: str = "mnist") -> SimpleNamespace:
    run = SimpleNamespace(id=run_id, entry_id=entry, protocol=protocol)
    return SimpleNamespace(run=run, protocol={"dataset": dataset}, worst={0.3: worst}, primary_eps=0.3,
                           unreliable=False, escalated=False)


def test_versions_of_one_protocol_are_compared_and_other_families_are_not() -> None:
    assert protocol_family("mnist-linf-quick-v2") == "mnist-linf-quick" == protocol_family("mnist-linf-quick")
    summaries = [_summary(1, "standard", "mnist-linf-quick-v1", 10.0), _summary(2, "standard", "mnist-linf-quick-v2",
                 5.0), _summary(3, "mart", "mnist-linf-quick-v1", 60.0),
                 _summary(4, "standard", "mnist-linf-tiny-v1", 0.0),  # the regression suite's 40-sample record
                 _summary(5, "x", "cifar10-linf-quick-v1", 1.0, dataset="cifar10")]
    [table] = compare_protocols(summaries)  # type: ignore[arg-type]
    assert (table["dataset"], table["family"], table["names"]) == ("mnist", "mnist-linf-quick",
                                                                   ["mnist-linf-quick-v1", "mnist-linf-quick-v2"])
    assert [(r["entry"], r["by"]) for r in table["rows"]] == [
        ("mart", {"mnist-linf-quick-v1": 60.0, "mnist-linf-quick-v2": None}),
        ("standard", {"mnist-linf-quick-v1": 10.0, "mnist-linf-quick-v2": 5.0})]
    assert table["rows"][1]["slugs"]["mnist-linf-quick-v2"] == "standard--mnist-linf-quick-v2--run2"
