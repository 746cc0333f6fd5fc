"""A hub dataset id when the Hub cannot be used (an offline switch, or no network) fails at once with a
clear message, without the Hub client's retries; a dataset in the local cache still loads."""

from __future__ import annotations

import socket
import time

import pytest

from conftest import base_args, write_jsonl

NAME = "no-such-org/no-such-dataset"


@pytest.fixture
def network(monkeypatch):
    """Every name lookup fails (no network) and is counted: `network.attempts`. Whether the hub is
    reachable is probed afresh in the test."""
    import datasets  # noqa: F401  (imported before the switches change: they are read at import)

    from alignlab.hub import hub_reachable

    class Network:
        attempts = 0

    def unreachable(host, *args, **kwargs):
        Network.attempts += 1
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unreachable)
    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    hub_reachable.cache_clear()
    yield Network
    hub_reachable.cache_clear()


def read_hub(name=NAME):
    from alignlab.data.io import read_rows
    from alignlab.errors import DataError

    start = time.perf_counter()
    with pytest.raises(DataError) as error:
        read_rows(name)
    return str(error.value), time.perf_counter() - start


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"])
def test_an_offline_switch_fails_without_touching_the_network(network, monkeypatch, switch):
    monkeypatch.setenv(switch, "1")
    message, seconds = read_hub()
    assert network.attempts == 0, f"{network.attempts} network attempts in {seconds:.1f} s"
    assert f"cannot load '{NAME}'" in message and f"{switch} is set" in message
    assert "not in the local datasets cache" in message and ".jsonl" in message


def test_no_network_fails_after_one_probe(network):
    message, seconds = read_hub()
    assert network.attempts == 1, f"{network.attempts} network attempts in {seconds:.1f} s"  # the probe alone
    assert "https://huggingface.co cannot be reached" in message and "not in the local datasets cache" in message


def test_a_training_run_fails_fast_and_makes_no_run_dir(network, cli, tmp_path, tiny_model_dir):
    out = tmp_path / "run"
    result = cli(base_args("sft", tiny_model_dir, NAME, out))
    assert result.code == 2 and "cannot be reached" in result.err and "Traceback" not in result.err
    assert network.attempts == 1
    assert not out.exists()


def test_a_cached_dataset_loads_when_the_hub_cannot_be_reached(network, monkeypatch, tmp_path):
    """The local cache is read as `datasets` itself reads it offline (a copy of a local dataset's cache
    entry under a hub id's name stands for a dataset downloaded earlier)."""
    import datasets

    cache = tmp_path / "cache"
    source = write_jsonl([{"prompt": "1+1=?", "completion": "2"}, {"prompt": "2+2=?", "completion": "4"}],
                         tmp_path / "tiny.jsonl")
    datasets.load_dataset("json", data_files=str(source), split="train", cache_dir=str(cache))
    built = next(p for p in (cache / "json").glob("*/*/*") if p.is_dir())
    target = cache / "someorg___tiny" / "default" / "0.0.0" / built.name
    target.parent.mkdir(parents=True)
    built.rename(target)
    (target / "json-train.arrow").rename(target / "tiny-train.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    network.attempts = 0  # those of building the cache entry

    from alignlab.data.io import read_rows

    rows = read_rows("someorg/tiny")
    assert [r.values for r in rows] == [{"prompt": "1+1=?", "completion": "2"}, {"prompt": "2+2=?", "completion": "4"}]
    assert network.attempts == 1
