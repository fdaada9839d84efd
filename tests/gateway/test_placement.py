"""Placement is a pure function of the model id and the hosts: every gateway replica agrees."""

from __future__ import annotations

import random

import msgspec

from gateway.placement import no_room_across_hosts, place
from shared.host_api import DeviceState, HostState, WorkerState


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


MIB = 1 << 20


def roomy(url: str, free_mib: int, *workers: WorkerState) -> HostState:
    device = DeviceState(name="cpu", total_memory=1000 * MIB, free_memory=free_mib * MIB)
    return HostState(host_id=url, url=url, devices=[device], models=list(workers))


def idle(model_id: str, used: float, mib: int = 300) -> WorkerState:
    return WorkerState(model_id=model_id, status="loaded", device="cpu", quantization="none",
                       estimated_bytes=mib * MIB, last_used_at=used)  # fmt: skip


def test_placement_skips_hosts_without_room_and_stays_deterministic() -> None:
    hosts = [roomy(f"http://h{i}", free) for i, free in enumerate([100, 500, 500, 900])]
    need = {"cpu": 400 * MIB}
    for i in range(30):
        chosen = place(f"m{i}", hosts, need=need)
        assert chosen is not None and chosen.url != "http://h0"
        assert place(f"m{i}", random.Random(i).sample(hosts, len(hosts)), need=need) == chosen
    assert {place(f"m{i}", hosts, need=need).url for i in range(30)} == {
        "http://h1",
        "http://h2",
        "http://h3",
    }  # type: ignore[union-attr]


def test_placement_evicts_only_when_no_host_has_room() -> None:
    full = roomy("http://full", 100, idle("a", 1.0))
    pinned = roomy("http://pinned", 100, msgspec.structs.replace(idle("b", 1.0), keep_alive_s=-1.0))
    need = {"cpu": 300 * MIB}
    assert place("m", [full, pinned], need=need) == full  # the pinned model can't go
    assert place("m", [full, pinned, roomy("http://free", 400)], need=need).url == "http://free"  # type: ignore[union-attr]
    assert place("m", [pinned], need=need) is None
    message = no_room_across_hosts("m", [pinned], need)
    assert (
        f"needs {300 * MIB} bytes on cpu" in message
        and f"http://pinned cpu: {100 * MIB} bytes free" in message
    )


def test_replicas_avoid_hosts_that_hold_one() -> None:
    hosts = [roomy(f"http://h{i}", 900) for i in range(3)]
    first = place("m", hosts)
    assert first is not None
    second = place("m", hosts, avoid=frozenset({first.url}))
    assert second is not None and second.url != first.url
    assert place("m", hosts, avoid=frozenset(h.url for h in hosts)) is None
