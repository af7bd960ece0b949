"""The embedded database's memory and WAL settings follow the machine's memory."""

from __future__ import annotations

import os

from delta_actors.local.cluster import machine_memory, tuned_settings

GB = 1024**3


def test_shared_buffers_take_an_eighth_of_memory_within_bounds():
    """An eighth of memory, never below PostgreSQL's default 128 MB nor above 2 GB."""
    assert tuned_settings(512 * 1024**2)["shared_buffers"] == "128MB"
    assert tuned_settings(8 * GB)["shared_buffers"] == "1024MB"
    assert tuned_settings(64 * GB)["shared_buffers"] == "2048MB"


def test_the_planner_is_told_of_the_page_cache_and_wal_is_compressed():
    """effective_cache_size is half of memory; WAL settings are the same everywhere."""
    settings = tuned_settings(8 * GB)
    assert settings["effective_cache_size"] == "4096MB"
    assert settings["maintenance_work_mem"] == "128MB"
    assert (settings["wal_compression"], settings["checkpoint_timeout"]) == ("on", "15min")
    assert settings["max_wal_size"] == "2GB"


def test_machine_memory_is_what_this_process_may_use():
    """At most the physical memory, and positive."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < machine_memory() <= physical
