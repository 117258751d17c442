"""The real psutil sampler on this host, and the service running it through a thread
under the real clock."""

from __future__ import annotations

from pathlib import Path

import trio

from daemon.config import Duration, SystemConfig
from daemon.core.bus import EventBus
from daemon.system import SystemHealthService, existing_parent, read_host_sample


def test_read_host_sample_values_are_in_range(tmp_path: Path) -> None:
    read_host_sample(tmp_path)  # the first cpu_percent() call only primes psutil
    s = read_host_sample(tmp_path)
    assert 0.0 <= s.cpu_fraction <= 1.0
    assert s.cpu_count >= 1
    assert min(s.load1, s.load5, s.load15) >= 0.0
    assert 0.0 <= s.memory_used_fraction < 1.0
    assert s.memory_available_bytes > 0
    assert 0.0 <= s.disk_used_fraction <= 1.0
    assert s.disk_free_bytes >= 0
    assert s.temperature_c is None or 0.0 < s.temperature_c < 150.0


def test_a_state_dir_not_created_yet_reads_its_parents_filesystem(tmp_path: Path) -> None:
    missing = tmp_path / "not" / "yet" / "there"
    assert existing_parent(missing) == tmp_path
    s = read_host_sample(missing)
    assert 0.0 <= s.disk_used_fraction <= 1.0
    assert not missing.exists()  # reading never creates it


async def test_service_samples_the_real_host_through_a_thread(tmp_path: Path) -> None:
    config = SystemConfig(interval=Duration(0.05))
    service = SystemHealthService(config, tmp_path, EventBus())
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run)
            while service.samples_taken < 4:
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert service.sample_failures == 0
    status = service.status()
    assert status.summary.startswith("cpu ")
    assert status.details["sample"]["cpu_count"] >= 1
    assert {m.name for m in service.metrics()} >= {
        "lifeline_host_cpu_fraction", "lifeline_host_overloaded", "lifeline_host_sample_failures_total"
    }
