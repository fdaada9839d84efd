"""Placement is a pure function of the model id and the hosts: every gateway replica agrees."""

from __future__ import annotations

import random

from gateway.placement import place
from shared.host_api import DeviceState, HostState


def host(url: str, *devices: str) -> HostState:
    return HostState(
        host_id=f"id-{url}-{random.random()}",  # host ids change on restart; placement must not care
        url=url,
        devices=[DeviceState(name=d, total_memory=1 << 30, free_memory=1 << 29) for d in devices],
        models=[],
    )


HOSTS = [host(f"http://h{i}:8100", "cuda:0", "cuda:1") for i in range(5)] + [host("http://cpu:8100", "cpu")]


def test_two_replicas_with_hosts_in_any_order_pick_the_same_host() -> None:
    for i in range(50):
        model = f"org/model-{i}"
        shuffled = random.Random(i).sample(HOSTS, len(HOSTS))
        rebuilt = [host(h.url, *(d.name for d in h.devices)) for h in HOSTS]
        assert place(model, HOSTS).url == place(model, shuffled).url == place(model, rebuilt).url  # type: ignore[union-attr]


def test_models_spread_over_hosts_and_only_move_when_their_host_goes() -> None:
    chosen = {f"m{i}": place(f"m{i}", HOSTS).url for i in range(300)}  # type: ignore[union-attr]
    assert len(set(chosen.values())) == len(HOSTS)
    gone = "http://h2:8100"
    remaining = [h for h in HOSTS if h.url != gone]
    for model, url in chosen.items():
        after = place(model, remaining).url  # type: ignore[union-attr]
        assert after == url or url == gone


def test_a_device_only_some_hosts_offer_narrows_the_choice() -> None:
    assert {place(f"m{i}", HOSTS, device="cpu").url for i in range(20)} == {"http://cpu:8100"}  # type: ignore[union-attr]
    assert place("m", HOSTS, device="cuda:7") is None
    assert place("m", []) is None
