"""Fixtures of the chart tests: the chart loaded once, each ci/*-values.yaml scenario rendered once."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest

from tests.chart._support import (
    CHART_DIR,
    SUBCHART_KEY,
    Rendered,
    load_values,
    prepare_own_chart,
    render_chart,
    scenario_files,
)

SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in scenario_files()}
OWN_CHART_SCENARIO = "own-chart"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "scenario" in metafunc.fixturenames:
        metafunc.parametrize("scenario", sorted(SCENARIOS), scope="session")


@pytest.fixture(scope="session")
def chart() -> Iterator[helm.Chart]:
    with helm.Chart.load(CHART_DIR) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def own_chart_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return prepare_own_chart(tmp_path_factory.mktemp("own-chart"))


@pytest.fixture(scope="session")
def own_chart(own_chart_dir: Path) -> Iterator[helm.Chart]:
    with helm.Chart.load(own_chart_dir) as loaded:
        yield loaded


@pytest.fixture(scope="session")
def render(chart: helm.Chart) -> Callable[[dict[str, Any]], Rendered]:
    def _render(values: dict[str, Any]) -> Rendered:
        return render_chart(chart, values)

    return _render


@pytest.fixture(scope="session")
def scenario_values(scenario: str) -> dict[str, Any]:
    return load_values(SCENARIOS[scenario])


@pytest.fixture(scope="session")
def rendered(chart: helm.Chart, scenario_values: dict[str, Any]) -> Rendered:
    return render_chart(chart, scenario_values)


@pytest.fixture(scope="session")
def deployed(scenario: str, rendered: Rendered, own_chart: helm.Chart, scenario_values: dict[str, Any]) -> Rendered:
    """The render that holds the pod: the chart itself, or for the own-chart scenario the user's chart
    with the scenario's values under its dependency key."""
    if scenario == OWN_CHART_SCENARIO:
        return render_chart(own_chart, {SUBCHART_KEY: scenario_values})
    return rendered


@pytest.fixture(scope="session")
def effective_values(chart: helm.Chart, scenario_values: dict[str, Any]) -> dict[str, Any]:
    """The scenario's values coalesced with the chart defaults, as the templates see them."""
    return chart.merge_values(scenario_values)
