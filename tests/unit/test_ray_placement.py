"""Placement on a Ray cluster (shoal/backends/ray_placement.py): resource requests and fallbacks, without Ray."""

from __future__ import annotations

import msgspec

from shoal._spec.definitions import Options
from shoal.backends.ray_placement import (
    MIB,
    NodeView,
    accelerator_types,
    alternatives,
    capacity,
    choose,
    waiting_reason,
)


def node(node_id: str, alive: bool = True, free: dict | None = None, **res: float) -> NodeView:
    """A node with 2 CPUs and 8 GiB, plus `res` (`A100=1` is a GPU with `accelerator_type:A100`, `eu=1`
    `region:eu-west`), all free unless `free` says otherwise."""
    total = {"CPU": 2.0, "memory": 8192.0 * MIB}
    for k, v in res.items():
        if k == "eu":
            total["region:eu-west"] = v
        elif k == "CPU":
            total["CPU"] = v
        else:
            total["GPU"] = total.get("GPU", 0.0) + v
            total[f"accelerator_type:{k}"] = v
    return NodeView(node_id, alive, total, dict(total if free is None else free))


def test_defaults_are_modals_requests() -> None:
    (p,) = alternatives(msgspec.convert({}, Options))
    assert p.actor_options() == {"num_cpus": 0.125, "memory": 128 * MIB}


def test_cpu_and_memory_requests_not_limits() -> None:
    (p,) = alternatives(msgspec.convert({"cpu": [1.5, 4], "memory": [2048, 4096]}, Options))
    assert p.num_cpus == 1.5 and p.memory == 2048 * MIB


def test_gpu_model_becomes_an_accelerator_type_resource() -> None:
    (p,) = alternatives(msgspec.convert({"gpu": ["A100-80GB:2"]}, Options))
    assert p.actor_options() == {"num_cpus": 0.125, "memory": 128 * MIB, "num_gpus": 2,
                                 "resources": {"accelerator_type:A100-80G": 0.001}}


def test_modal_names_map_to_ray_accelerator_types() -> None:
    assert accelerator_types("A100") == ("A100", "A100-40G", "A100-80G")
    assert accelerator_types("H100") == ("H100", "H200")
    assert accelerator_types("h100!") == ("H100",)
    assert accelerator_types("T4") == ("T4",)
    assert accelerator_types("any") is None


def test_any_gpu_asks_for_gpus_of_no_particular_model() -> None:
    (p,) = alternatives(msgspec.convert({"gpu": ["ANY:2"]}, Options))
    assert p.num_gpus == 2 and p.resources == {}


def test_fallbacks_in_order_gpu_then_region() -> None:
    ps = alternatives(msgspec.convert({"gpu": ["H100", "A100-40GB"], "region": ["eu-west", "us-east"]}, Options))
    assert [(p.accelerator, p.region) for p in ps] == [
        ("H100", "eu-west"), ("H100", "us-east"), ("H200", "eu-west"), ("H200", "us-east"),
        ("A100-40G", "eu-west"), ("A100-40G", "us-east")]
    assert ps[0].resources == {"accelerator_type:H100": 0.001, "region:eu-west": 0.001}


def test_choose_takes_the_first_alternative_a_live_node_has_room_for() -> None:
    ps = alternatives(msgspec.convert({"gpu": ["H100", "A100"]}, Options))
    nodes = [node("cpu"), node("a100", A100=1)]
    chosen = choose(ps, nodes)
    assert chosen is not None and chosen.accelerator == "A100"
    nodes.append(node("h100", H100=1))
    assert choose(ps, nodes).accelerator == "H100"  # type: ignore[union-attr]


def test_dead_and_full_nodes_do_not_count() -> None:
    ps = alternatives(msgspec.convert({"region": ["eu-west"]}, Options))
    assert choose(ps, [node("eu", alive=False, eu=1)]) is None
    full = node("eu", free={"CPU": 0.0, "memory": 8192.0 * MIB, "region:eu-west": 1.0}, eu=1)
    assert choose(ps, [full]) is None


def test_reason_when_no_node_could_ever_hold_it() -> None:
    ps = alternatives(msgspec.convert({"gpu": ["H100"]}, Options))
    reason = waiting_reason(ps, [node("a", A100=1), node("b")])
    assert reason.startswith("waiting for a GPU (H100): no node of the Ray cluster can hold")
    assert "1x A100 GPU" in reason and "2 nodes" in reason


def test_reason_when_the_nodes_that_could_are_full() -> None:
    ps = alternatives(msgspec.convert({"gpu": ["A100"]}, Options))
    busy = node("a", free={"CPU": 2.0, "memory": 8192.0 * MIB, "GPU": 0.0}, A100=1)
    assert waiting_reason(ps, [busy, node("b")]) == (
        "waiting for a GPU (A100): the 1 node that could hold 0.125 CPU, 128 MiB, 1x A100 GPU is full")


def test_reason_names_the_region() -> None:
    reason = waiting_reason(alternatives(msgspec.convert({"region": ["eu-west"]}, Options)), [node("a")])
    assert reason.startswith("waiting for room in region eu-west: no node")
    assert "no regions declared" in reason


def test_reason_without_live_nodes() -> None:
    assert waiting_reason(alternatives(msgspec.convert({}, Options)), [node("a", alive=False)]) == (
        "waiting for room: the Ray cluster has no live nodes")


def test_capacity_counts_live_nodes_like_the_local_backend_counts_machines() -> None:
    assert capacity([node("a"), node("b", alive=False), node("c", CPU=16)]) == 8 + 64
