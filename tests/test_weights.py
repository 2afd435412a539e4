"""hpa_zoo.weights: verified downloads into the cache, without internet (file:// URLs and a loopback HTTP server)."""
from __future__ import annotations

import hashlib
import urllib.request

import pytest

from hpa_zoo import weights
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
