"""The one cache directory (e2e.cache): KSERVE_COMPAT_CACHE, then XDG_CACHE_HOME, then ~/.cache."""

from __future__ import annotations

from pathlib import Path

from e2e.cache import cache_root


def test_the_harness_variable_wins() -> None:
    env = {"KSERVE_COMPAT_CACHE": "/srv/kc", "XDG_CACHE_HOME": "/xdg"}
    assert cache_root(env) == Path("/srv/kc")


def test_xdg_cache_home_is_honoured_next() -> None:
    assert cache_root({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/kserve-compat")


def test_the_default_is_under_the_home_directory() -> None:
    assert cache_root({}) == Path.home() / ".cache" / "kserve-compat"
    assert cache_root({"KSERVE_COMPAT_CACHE": "", "XDG_CACHE_HOME": ""}) == Path.home() / ".cache" / "kserve-compat"
