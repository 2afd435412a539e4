"""hpa_zoo.zoo.weights: verified downloads into the cache, without internet (file:// URLs and a loopback HTTP server)."""
from __future__ import annotations

import hashlib
import urllib.request

import pytest

from hpa_zoo.zoo import weights
from hpa_zoo.errors import WeightsError
from hpa_zoo.registry import WeightsSpec

PAYLOAD = bytes(range(256)) * 9000  # 2.3 MB: several 1 MiB chunks
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()  # independent reference: hashlib on the bytes in memory


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own (not yet existing) cache folder and starts online."""
    root = tmp_path / "cache" / "nested"
    monkeypatch.setenv("HPA_ZOO_CACHE", str(root))
    monkeypatch.delenv("HPA_ZOO_OFFLINE", raising=False)
    monkeypatch.setattr(weights, "DOWNLOAD_TIMEOUT_S", 10.0)
    monkeypatch.setattr(weights, "DOWNLOAD_BACKOFF_S", 0.05)
    return root


def _spec(*urls: str, sha256: str = PAYLOAD_SHA) -> WeightsSpec:
    return WeightsSpec(name="hpa", urls=tuple(urls), sha256=sha256, format="onnx", filename="model.onnx")


def _cache_files(cache) -> list[str]:
    folder = cache / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_cache_dir_honours_env_and_creates_it(cache):
    assert not cache.exists()
    assert weights.cache_dir() == cache
    assert cache.is_dir()


def test_sha256_file_matches_hashlib_on_multi_chunk_file(tmp_path):
    path = tmp_path / "blob"
    path.write_bytes(PAYLOAD)
    assert weights.sha256_file(path) == PAYLOAD_SHA


def test_http_download_then_cache_hit_does_not_contact_server(server, cache):
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    spec = _spec(server.url("/m.onnx"))
    first = weights.fetch(spec, progress=False)
    assert first == cache / "weights" / "model.onnx"
    assert first.read_bytes() == PAYLOAD
    second = weights.fetch(spec, progress=False)
    assert second == first
    assert server.hits == {"/m.onnx": 1}
    assert _cache_files(cache) == ["model.onnx"]  # no temp files left


def test_file_url_download(tmp_path, cache):
    src = tmp_path / "src.onnx"
    src.write_bytes(PAYLOAD)
    path = weights.fetch(_spec(src.as_uri()), progress=False)
    assert path.read_bytes() == PAYLOAD


def test_force_downloads_again(server):
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    spec = _spec(server.url("/m.onnx"))
    weights.fetch(spec, progress=False)
    weights.fetch(spec, force=True, progress=False)
    assert server.hits["/m.onnx"] == 2


def test_corrupted_cache_entry_is_removed_and_downloaded_again(server, cache):
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    spec = _spec(server.url("/m.onnx"))
    path = weights.fetch(spec, progress=False)
    path.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.warns(RuntimeWarning, match="corrupted"):
        again = weights.fetch(spec, progress=False)
    assert again.read_bytes() == PAYLOAD
    assert server.hits["/m.onnx"] == 2


def test_offline_cache_hit_and_miss(server, cache, monkeypatch):
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    spec = _spec(server.url("/m.onnx"))
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    with pytest.raises(WeightsError) as err:
        weights.fetch(spec, progress=False)
    msg = str(err.value)
    assert str(cache / "weights" / "model.onnx") in msg and "local_path" in msg and PAYLOAD_SHA in msg
    assert server.hits == {}  # the network was not touched
    monkeypatch.delenv("HPA_ZOO_OFFLINE")
    weights.fetch(spec, progress=False)
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    assert weights.fetch(spec, progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/m.onnx": 1}


def test_wrong_hash_names_both_hashes_and_leaves_nothing(server, cache):
    bad = PAYLOAD[::-1]
    server.routes["/m.onnx"] = ("ok", bad)
    with pytest.raises(WeightsError) as err:
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    msg = str(err.value)
    assert PAYLOAD_SHA in msg and hashlib.sha256(bad).hexdigest() in msg and server.url("/m.onnx") in msg
    assert _cache_files(cache) == []


def test_truncated_download_fails_and_leaves_nothing(server, cache):
    server.routes["/m.onnx"] = ("truncate", PAYLOAD)
    with pytest.raises(WeightsError, match="truncated|IncompleteRead") as err:
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert server.url("/m.onnx") in str(err.value)
    assert _cache_files(cache) == []


def test_mirror_fallback_after_404(server, cache):
    server.routes["/good.onnx"] = ("ok", PAYLOAD)
    path = weights.fetch(_spec(server.url("/gone.onnx"), server.url("/good.onnx")), progress=False)
    assert path.read_bytes() == PAYLOAD
    assert server.hits == {"/gone.onnx": 1, "/good.onnx": 1}


def test_all_mirrors_failing_lists_each_url(server, cache):
    with pytest.raises(WeightsError) as err:
        weights.fetch(_spec(server.url("/a"), server.url("/b")), progress=False)
    msg = str(err.value)
    assert server.url("/a") in msg and server.url("/b") in msg and "404" in msg
    assert str(cache / "weights" / "model.onnx") in msg


def test_local_path_is_verified_and_copied_into_cache(tmp_path, cache):
    local = tmp_path / "mine.onnx"
    local.write_bytes(PAYLOAD)
    path = weights.fetch(_spec("http://127.0.0.1:9/never"), local_path=local)
    assert path == cache / "weights" / "model.onnx" and path.read_bytes() == PAYLOAD
    local.write_bytes(b"something else")
    with pytest.raises(WeightsError, match=PAYLOAD_SHA) as err:
        weights.fetch(_spec(), local_path=local)
    assert str(local) in str(err.value) and hashlib.sha256(b"something else").hexdigest() in str(err.value)


def test_spec_without_sha256_refuses_download_but_accepts_local_path(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("must not download a file it cannot verify")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    spec = _spec("http://127.0.0.1:9/never", sha256="")
    with pytest.raises(WeightsError, match="no sha256"):
        weights.fetch(spec)
    local = tmp_path / "mine.onnx"
    local.write_bytes(b"unverifiable")
    with pytest.warns(RuntimeWarning, match="unverified"):
        assert weights.fetch(spec, local_path=local) == local


# ---------------------------------------------------------------------------------------------- flaky networks
def test_500_twice_then_200_is_retried_with_backoff(server, cache):
    import time

    server.routes["/m.onnx"] = ("fail:2", PAYLOAD)
    start = time.perf_counter()
    path = weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert path.read_bytes() == PAYLOAD and server.hits["/m.onnx"] == 3
    assert time.perf_counter() - start >= 0.05 + 0.1  # waited 0.05 s, then 0.1 s
    assert _cache_files(cache) == ["model.onnx"]


def test_reset_mid_transfer_gives_up_after_the_attempts(server, cache):
    server.routes["/m.onnx"] = ("reset", PAYLOAD)
    with pytest.raises(WeightsError) as err:
        weights.fetch(_spec(server.url("/m.onnx")), progress=False, attempts=2)
    msg = str(err.value)
    assert server.hits["/m.onnx"] == 2
    assert f"{server.url('/m.onnx')}: 2 attempt(s), last: " in msg
    assert str(cache / "weights" / "model.onnx") in msg and "HPA_ZOO_DOWNLOAD_ATTEMPTS" in msg
    assert _cache_files(cache) == []  # no .part left


def test_stall_past_the_timeout_from_the_environment(server, cache, monkeypatch):
    import time

    server.routes["/m.onnx"] = ("stall", PAYLOAD)
    server.stall_s = 4.0
    monkeypatch.setenv("HPA_ZOO_DOWNLOAD_TIMEOUT", "0.4")
    monkeypatch.setenv("HPA_ZOO_DOWNLOAD_ATTEMPTS", "1")
    start = time.perf_counter()
    with pytest.raises(WeightsError,
                       match=r"(?s)1 attempt\(s\), last: .*timed out.*HPA_ZOO_DOWNLOAD_TIMEOUT, now 0.4 s"):
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert time.perf_counter() - start < 3.0  # the 0.4 s timeout fired, not the server's 4 s stall
    assert _cache_files(cache) == []


def test_html_page_is_not_the_file_and_not_retried(server, cache):
    server.routes["/m.onnx"] = ("html", PAYLOAD)
    with pytest.raises(WeightsError, match=r"(?s)not retried\), the server answered with an HTML page.*quota exceeded"):
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert server.hits["/m.onnx"] == 1 and _cache_files(cache) == []


def test_retries_then_next_mirror(server, cache):
    server.routes["/a"] = ("fail:9", PAYLOAD)
    server.routes["/b"] = ("ok", PAYLOAD)
    assert weights.fetch(_spec(server.url("/a"), server.url("/b")), progress=False).read_bytes() == PAYLOAD
    assert server.hits == {"/a": 3, "/b": 1}


@pytest.mark.parametrize("env,value", [("HPA_ZOO_DOWNLOAD_TIMEOUT", "0"), ("HPA_ZOO_DOWNLOAD_ATTEMPTS", "-1"),
                                       ("HPA_ZOO_DOWNLOAD_ATTEMPTS", "two")])
def test_bad_download_settings_are_config_errors(server, monkeypatch, env, value):
    from hpa_zoo.errors import ConfigError

    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError, match=rf"\${env}='{value}': must be a positive"):
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert server.hits == {}


def test_offline_never_opens_a_socket(server, cache, monkeypatch):
    """HPA_ZOO_OFFLINE=1: a cache miss and a hit, and a published registry row, with every connect failing."""
    import socket

    from hpa_zoo.registry import get_spec

    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    weights.fetch(_spec(server.url("/m.onnx")), progress=False)  # fill the cache while online
    connects = []

    def guard(self, address, *a):
        connects.append(address)
        raise AssertionError(f"socket connect to {address} while HPA_ZOO_OFFLINE=1")

    monkeypatch.setattr(socket.socket, "connect", guard)
    monkeypatch.setattr(socket.socket, "connect_ex", guard)
    monkeypatch.setenv("HPA_ZOO_OFFLINE", "1")
    assert weights.fetch(_spec(server.url("/m.onnx")), progress=False).read_bytes() == PAYLOAD
    with pytest.raises(WeightsError, match=r"HPA_ZOO_OFFLINE is set .* Put the file other\.onnx"):
        weights.fetch(WeightsSpec(name="hpa", urls=(server.url("/m.onnx"),), sha256=PAYLOAD_SHA, format="onnx",
                                  filename="other.onnx"), progress=False)
    published = get_spec("team1_densenet121_1024").weights_spec("hpa")  # a real row with https mirrors
    assert published.sha256 and published.urls
    with pytest.raises(WeightsError, match="HPA_ZOO_OFFLINE is set"):
        weights.fetch(published, progress=False)
    assert connects == [] and server.hits == {"/m.onnx": 1}


def test_full_cache_disk_names_the_path_and_keeps_earlier_files(server, small_disk, monkeypatch):
    """A real 1 MiB tmpfs as the cache: the 2.3 MB download hits ENOSPC; not retried; nothing half-written."""
    monkeypatch.setenv("HPA_ZOO_CACHE", str(small_disk))
    small = b"x" * 1000
    server.routes["/small.onnx"] = ("ok", small)
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    earlier = weights.fetch(WeightsSpec(name="hpa", urls=(server.url("/small.onnx"),),
                                        sha256=hashlib.sha256(small).hexdigest(), format="onnx",
                                        filename="small.onnx"), progress=False)
    with pytest.raises(WeightsError, match=rf"cannot write the weights cache file {small_disk}/weights/model\.onnx: "
                                           r"the disk is full .*free space there .*HPA_ZOO_CACHE"):
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert server.hits["/m.onnx"] == 1
    assert sorted(p.name for p in (small_disk / "weights").iterdir()) == ["small.onnx"]
    assert earlier.read_bytes() == small


def test_read_only_cache_disk(server, small_disk, monkeypatch):
    monkeypatch.setenv("HPA_ZOO_CACHE", str(small_disk))
    (small_disk / "weights").mkdir()
    small_disk.read_only()
    server.routes["/m.onnx"] = ("ok", PAYLOAD)
    with pytest.raises(WeightsError, match=rf"{small_disk}.*(read-only|not writable).*HPA_ZOO_CACHE"):
        weights.fetch(_spec(server.url("/m.onnx")), progress=False)
    assert server.hits == {}
