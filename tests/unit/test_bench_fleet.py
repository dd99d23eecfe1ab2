"""The fleet section's bookkeeping on made-up jobs: warm-hit shares, scaling and index rows, the
gallery entries it writes for a million images and the models.yaml its workers share. The processes
themselves (a minute of real workers) run in `python -m bench.run --only fleet`, never here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench import fleet, run
from bench.fleet import JobRecord
from services.images_service.gallery import GalleryIndex, decode
from services.images_service.models import parse_models_yaml
from services.images_service.storage.keys import validate_image_key


def job(worker: str, warm: bool | None, second: int) -> JobRecord:
    return JobRecord(worker, warm, f"2026-01-01T00:00:{second:02d}+00:00")


def test_the_warm_share_counts_the_jobs_that_found_their_model_loaded() -> None:
    records = [job("w1", True, 1), job("w1", True, 2), job("w2", False, 1), job("w2", True, 3)]
    assert fleet.warm_share(records) == 75.0


def test_without_a_recorded_warm_flag_there_is_no_share_to_report() -> None:
    assert fleet.warm_share([job("w1", None, 1), job("w2", None, 2)]) is None
    assert fleet.warm_share([job("w1", True, 1), job("w2", None, 2)]) is None
    assert fleet.warm_share([]) is None


def test_once_both_models_are_resident_leaves_out_each_workers_first_job() -> None:
    records = [job("w1", True, 5), job("w1", False, 1), job("w2", False, 2), job("w2", True, 4)]
    left = fleet.after_first_jobs(records)
    assert left == [job("w1", True, 5), job("w2", True, 4)]
    assert fleet.warm_share(left) == 100.0


def test_scaling_rows_give_jobs_per_minute_and_the_gain_of_eight_workers() -> None:
    rates = {1: 55.0, 2: 109.0, 4: 216.0, 8: 410.0}
    rows = fleet.scaling_rows(rates, {8: {"jobs": 96}})

    assert [row.key for row in rows] == [
        "fleet.scaling.1",
        "fleet.scaling.2",
        "fleet.scaling.4",
        "fleet.scaling.8",
        "fleet.scaling.ratio",
    ]
    assert rows[3].value == 410.0 and rows[3].unit == "jobs/min" and rows[3].detail == {"jobs": 96}
    assert rows[0].label.startswith("jobs/min, 1 worker (") and "8 workers" in rows[3].label
    gain = rows[-1]
    assert gain.value == pytest.approx(7.45, abs=0.01) and gain.met is True
    assert gain.note == "93 % of linear"
    assert fleet.scaling_rows({1: 60.0, 8: 400.0}, {})[-1].met is False  # 6.67× < 7×


def test_jobs_per_minute_is_jobs_over_the_burst() -> None:
    assert fleet.jobs_per_minute(96, 12.0) == 480.0


def test_warm_rows_hold_dispatch_to_its_goal_and_print_fifo_beside_it() -> None:
    dispatch = [job(f"w{i % 4}", True, i) for i in range(20)]
    fifo = [job(f"w{i % 4}", i % 2 == 0, i) for i in range(20)]
    rows = fleet.warm_rows({"dispatch": (dispatch, 10.0), "fifo": (fifo, 20.0)})

    assert [row.key for row in rows] == ["fleet.warm.dispatch", "fleet.warm.fifo"]
    assert rows[0].value == 100.0 and rows[0].met is True and rows[0].goal == fleet.WARM_GOAL
    assert "FIFO 50 %" in rows[0].note and "120 jobs/min" in rows[0].note
    assert rows[1].value == 50.0 and rows[1].goal is None
    assert rows[1].detail["warm"] == 10 and rows[1].detail["jobs"] == 20


def test_a_worker_that_records_no_warm_flag_gives_a_row_that_says_so() -> None:
    unknown = [job("w1", None, i) for i in range(4)]
    rows = fleet.warm_rows({"dispatch": (unknown, 2.0), "fifo": (unknown, 2.0)})
    assert rows[0].value is None and rows[0].met is None
    assert rows[0].note.startswith("not measured")


def test_index_rows_divide_the_p50s_and_the_memory_by_the_images() -> None:
    p50_ms = {200: [5.0, 5.2, 5.4], 1_000_000: [5.6, 5.8, 6.5]}
    rows = fleet.index_rows(
        p50_ms, (1_000_000, 751_000_000), {"order": 150_000_000, "items": 600_000_000}, (200, 1_000_000)
    )

    latest, memory = rows
    assert latest.value == pytest.approx(5.8 / 5.2, abs=0.001) and latest.met is True
    assert latest.note == "5.8 vs 5.2 ms"
    assert memory.value == 750.0 and memory.unit == "bytes" and memory.met is False
    assert memory.note.endswith("order 150, items 600")


class RecordingPipeline:
    def __init__(self) -> None:
        self.commands: list[tuple[str, Any]] = []
        self.executed: list[int] = []

    def zadd(self, key: str, mapping: dict[str, float]) -> None:
        self.commands.append(("zadd", (key, mapping)))

    def zremrangebylex(self, key: str, low: str, high: str) -> None:
        self.commands.append(("zremrangebylex", (key, low, high)))

    def hset(self, key: str, field: str, value: str) -> None:
        self.commands.append(("hset", (key, field, value)))

    def execute(self) -> None:
        self.executed.append(len(self.commands))


class RecordingRedis:
    def __init__(self) -> None:
        self.pipe = RecordingPipeline()

    def pipeline(self, transaction: bool = True) -> RecordingPipeline:
        return self.pipe


def test_the_million_is_written_in_the_index_layout_in_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet, "FILL_BATCH", 3)
    redis = RecordingRedis()
    index = GalleryIndex(redis, "bench")  # type: ignore[arg-type]
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    assert fleet.fill_index(index, fleet.index_items(7, now)) == 7

    # One entry an image (its old entry of the same time replaced first), no alias, no owner set;
    # a round trip every 3 images.
    assert redis.pipe.executed == [6, 12, 14]
    assert {args[0] for _, args in redis.pipe.commands} == {index.index_key}
    members = [next(iter(args[1])) for name, args in redis.pipe.commands if name == "zadd"]
    assert members == sorted(members) and len(members) == 7  # one a second, oldest first
    items = [decode(member) for member in members]
    assert [item.last_modified for item in items] == [
        (now - timedelta(seconds=7 - i)).isoformat() for i in range(7)
    ]
    assert len({item.key for item in items}) == 7
    assert all(validate_image_key(item.key, fleet.PREFIX) == item.key for item in items)
    assert all(len(member) < 200 for member in members)  # the compact entry the memory row measures


def test_the_fleets_models_are_registered_where_the_service_finds_them(tmp_path: Path) -> None:
    path = fleet.write_models_yaml(tmp_path / "fleet")
    entries = parse_models_yaml(path.read_text(), path.parent)
    assert set(entries) == set(fleet.MODELS)
    assert all(entry.is_local and Path(entry.source).is_dir() for entry in entries.values())


def test_the_fleet_is_a_section_of_the_bench() -> None:
    assert "fleet" in run.SECTIONS


def test_the_two_model_burst_is_an_even_mix_in_the_same_order_every_run() -> None:
    burst = fleet.mixed_burst(60)
    assert burst == fleet.mixed_burst(60)
    assert burst.count(fleet.MODELS[0]) == burst.count(fleet.MODELS[1]) == 30
    assert burst != [fleet.MODELS[i % 2] for i in range(60)]
