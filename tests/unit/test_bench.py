"""The bench's bookkeeping on made-up numbers: statistics, goals, the table, the JSON file and its
name, the interleaving of cases, quoting a saved GPU result, and the GPU script's configurations.
The bench itself (minutes of real processes) is `make bench`, never part of the test suite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.report import Goal, Measurement


def test_percentiles_interpolate_between_ranks_like_numpy() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert report.median(values) == 3.0
    assert report.percentile(values, 0) == 1.0
    assert report.percentile(values, 100) == 5.0
    assert report.percentile(values, 25) == 2.0
    assert report.percentile([1.0, 2.0], 50) == 1.5
    assert report.percentile(list(map(float, range(1, 101))), 99) == pytest.approx(99.01)
    with pytest.raises(ValueError):
        report.percentile([], 50)


def test_ratio_refuses_a_broken_denominator() -> None:
    assert report.ratio(3.0, 2.0) == 1.5
    with pytest.raises(ValueError):
        report.ratio(1.0, 0.0)


@pytest.mark.parametrize(
    ("goal", "value", "met", "text"),
    [
        (Goal("<=", 1.5, "×"), 1.5, True, "≤ 1.50×"),
        (Goal("<=", 1.15, "×"), 1.2, False, "≤ 1.15×"),
        (Goal("<", 25.0, "ms"), 24.9, True, "< 25.0 ms"),
        (Goal("<", 25.0, "ms"), 25.0, False, "< 25.0 ms"),
        (Goal(">=", 1000, "jobs/min"), 999, False, "≥ 1,000 jobs/min"),
        (Goal(">", 1.0, "×"), 1.01, True, "> 1.00×"),
        (Goal("<=", 1.0, "s"), 0.93, True, "≤ 1.000 s"),
        (Goal("<=", 1, "calls"), 4, False, "≤ 1 call"),
    ],
)
def test_a_goal_is_met_by_its_bound_and_reads_as_it_is_meant(
    goal: Goal, value: float, met: bool, text: str
) -> None:
    assert Measurement("k", "label", value, goal.unit, goal).met is met
    assert goal.text() == text


def test_a_row_without_goal_or_value_is_neither_met_nor_missed() -> None:
    assert Measurement("k", "informational", 3.0, "ms").met is None
    assert Measurement("k", "not measured", None, "s", Goal("<=", 1.0, "s")).met is None


def test_the_table_shows_each_goal_beside_its_value() -> None:
    rows = [
        Measurement("a", "latest p50 ratio", 1.04, "×", Goal("<=", 1.5, "×"), note="4.1 vs 3.9 ms"),
        Measurement("b", "job ÷ bare call", 1.31, "×", Goal("<=", 1.15, "×")),
        Measurement("c", "SDXL s/image (CUDA)", None, "s", Goal("<=", 1.0, "s"), note="no CUDA here"),
    ]
    lines = report.render_table(rows).splitlines()
    cells = [[cell.strip() for cell in line.strip("|").split("|")] for line in lines]

    assert cells[0] == ["measurement", "value", "goal", "met?"]
    assert set(lines[1]) <= {"|", "-"}
    assert cells[2] == ["latest p50 ratio", "1.04× (4.1 vs 3.9 ms)", "≤ 1.50×", "yes"]
    assert cells[3] == ["job ÷ bare call", "1.31×", "≤ 1.15×", "NO"]
    assert cells[4] == ["SDXL s/image (CUDA)", "no CUDA here", "≤ 1.000 s", "—"]
    assert len({len(line) for line in lines}) == 1  # columns line up


def test_results_are_saved_as_json_named_by_date_and_machine(tmp_path: Path) -> None:
    machine = {"machine": "x86_64", "cpu_count": 2, "device": "NVIDIA H200", "cpu": "AMD EPYC"}
    started = report.datetime(2026, 11, 21, 1, 30, 5, tzinfo=report.UTC)
    rows = [
        Measurement("latest.fs.ratio", "ratio", 1.04, "×", Goal("<=", 1.5, "×"), detail={"n": 200}),
        Measurement("queue.e2e_ratio", "ratio", 1.3, "×", Goal("<=", 1.15, "×")),
        Measurement("queue.cold_vs_warm", "cold ÷ warm", 1.8, "×"),
    ]

    default = report.result_path(machine, started, "bench")
    path = report.write_results(rows, machine, started=started, path=tmp_path / default.name)
    document = json.loads(path.read_text())

    assert default.parent == report.RESULTS_DIR
    assert path.name == "20261121-013005_bench_linux-x86_64-2cpu-nvidia-h200.json"
    assert document["machine"] == machine
    assert (document["goals_met"], document["goals_total"]) == (1, 2)
    first = document["measurements"][0]
    assert first["key"] == "latest.fs.ratio" and first["met"] is True and first["detail"] == {"n": 200}
    assert first["goal"] == {"op": "<=", "bound": 1.5} and first["goal_text"] == "≤ 1.50×"
    assert document["measurements"][2]["met"] is None


def test_machine_info_names_where_the_numbers_came_from() -> None:
    info = report.machine_info()
    assert info["device"] == "cpu"
    assert info["cpu_count"] >= 1 and info["python"].count(".") == 2
    assert report.machine_slug(info).startswith(report.platform.system().lower())


def test_interleaving_rotates_the_order_of_cases_every_round() -> None:
    calls: list[str] = []

    def case(name: str, value: float):  # type: ignore[no-untyped-def]
        def run() -> float:
            calls.append(name)
            return value

        return run

    samples = report.interleaved(3, {"a": case("a", 1.0), "b": case("b", 2.0), "c": case("c", 3.0)})

    assert calls == ["a", "b", "c", "b", "c", "a", "c", "a", "b"]
    assert samples == {"a": [1.0] * 3, "b": [2.0] * 3, "c": [3.0] * 3}


def test_summary_scales_to_the_unit_asked_for() -> None:
    assert report.summary([0.001, 0.002, 0.003], 1000) == {
        "n": 3,
        "median": 2.0,
        "p10": 1.2,
        "p90": 2.8,
        "min": 1.0,
        "max": 3.0,
    }


def test_without_cuda_the_gpu_row_quotes_the_latest_saved_result(tmp_path: Path) -> None:
    from bench import run

    for stamp, seconds in (("20261120-100000", 1.4), ("20261121-090000", 0.93)):
        document = {
            "started_at": f"{stamp[:4]}-{stamp[4:6]}-{stamp[6:8]}T00:00:00+00:00",
            "machine": {"device": "NVIDIA H200"},
            "measurements": [
                {"key": "gpu.sdxl.best", "label": "SDXL 1024×1024, 30 steps", "value": seconds, "unit": "s"}
            ],
        }
        (tmp_path / f"{stamp}_gpu_linux-x86_64-16cpu-nvidia-h200.json").write_text(json.dumps(document))

    found = report.latest_result("gpu", tmp_path)
    assert found is not None and found[1]["measurements"][0]["value"] == 0.93

    rows = run.quoted_gpu_rows(found)
    assert [row.key for row in rows] == ["gpu.sdxl.best"]
    assert rows[0].value is None and rows[0].met is None  # quoted, not measured in this run
    assert "0.93 s on NVIDIA H200" in rows[0].note and "20261121-090000_gpu" in rows[0].note


def test_a_failed_section_becomes_a_row_instead_of_ending_the_run() -> None:
    from bench import run

    try:
        raise RuntimeError("moto did not start\nlong details")
    except RuntimeError as exc:
        row = run.failed_row("latest", exc)
    assert row.value is None and row.met is None
    assert row.note == "failed: RuntimeError: moto did not start"
    assert "Traceback" in row.detail["traceback"]


def test_the_gpu_script_refuses_politely_without_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    import torch

    from bench import gpu_sdxl

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert gpu_sdxl.main([]) == 2
    assert "--cpu-smoke" in capsys.readouterr().err


def test_the_gpu_script_builds_the_published_model_shapes() -> None:
    """Built on the meta device (no memory): the inline configurations give the published models'
    parameter counts (SDXL UNet 2.57 B, SD 1.5 UNet 860 M, VAE, both CLIP text towers)."""
    from bench import gpu_sdxl

    assert gpu_sdxl.check_published_configs() == gpu_sdxl.PUBLISHED_PARAMETERS
