"""GPU matching and assignment (shoal/backends/gpus.py), from fake `nvidia-smi -L` output."""

from __future__ import annotations

import pytest

from shoal.backends.gpus import (
    GpuAllocator,
    Placement,
    choose,
    fallback_setting,
    normalize_model,
    parse_nvidia_smi,
    place,
    waiting_reason,
)

MIXED = """\
GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d1f0c1e-8a5e-4c3c-9d0e-000000000000)
GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-6e2f0c1e-8a5e-4c3c-9d0e-111111111111)
GPU 2: NVIDIA A100-SXM4-80GB (UUID: GPU-7f3f0c1e-8a5e-4c3c-9d0e-222222222222)
GPU 3: Tesla T4 (UUID: GPU-8a4f0c1e-8a5e-4c3c-9d0e-333333333333)
"""


@pytest.mark.parametrize(("name", "model"), [
    ("NVIDIA H100 80GB HBM3", "H100"),
    ("NVIDIA H100 PCIe", "H100"),
    ("NVIDIA H100 NVL", "H100"),
    ("NVIDIA H200", "H200"),
    ("NVIDIA A100-SXM4-80GB", "A100-80GB"),
    ("NVIDIA A100 80GB PCIe", "A100-80GB"),
    ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
    ("NVIDIA A100-PCIE-40GB", "A100-40GB"),
    ("NVIDIA A10G", "A10G"),
    ("NVIDIA A10", "A10"),
    ("Tesla T4", "T4"),
    ("NVIDIA L4", "L4"),
    ("NVIDIA L40S", "L40S"),
    ("NVIDIA B200", "B200"),
])
def test_product_names_map_to_models(name, model):
    assert normalize_model(name) == model


def test_parse_nvidia_smi_list():
    gpus = parse_nvidia_smi(MIXED + "  MIG 1g.10gb Device 0: (UUID: MIG-abc)\nNo devices were found\n")
    assert [(g.index, g.model) for g in gpus] == [(0, "H100"), (1, "A100-80GB"), (2, "A100-80GB"), (3, "T4")]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert gpus[0].uuid == "GPU-5d1f0c1e-8a5e-4c3c-9d0e-000000000000"


def test_exact_model_and_count():
    gpus = parse_nvidia_smi(MIXED)
    assert choose(["H100"], gpus, set()) == [0]
    assert choose(["A100-80GB:2"], gpus, set()) == [1, 2]
    assert choose(["T4"], gpus, set()) == [3]
    assert choose(["A100-80GB:3"], gpus, set()) is None  # never more than the machine has of one model
    assert choose(["L4"], gpus, set()) is None


def test_generic_a100_takes_either_size_and_h100_may_get_an_h200():
    gpus = parse_nvidia_smi(MIXED)
    assert choose(["A100"], gpus, set()) == [1]
    assert choose(["A100-40GB"], gpus, set()) is None
    h200 = parse_nvidia_smi("GPU 0: NVIDIA H200 (UUID: GPU-1)\n")
    assert choose(["H100"], h200, set()) == [0]
    assert choose(["H100!"], h200, set()) is None


def test_fallback_list_in_order_and_busy_gpus_are_skipped():
    gpus = parse_nvidia_smi(MIXED)
    assert choose(["H100", "A100-80GB"], gpus, set()) == [0]
    assert choose(["H100", "A100-80GB"], gpus, {0}) == [1]
    assert choose(["H100", "A100-80GB"], gpus, {0, 1}) == [2]
    assert choose(["H100", "A100-80GB"], gpus, {0, 1, 2}) is None
    assert choose(["L4", "T4"], gpus, set()) == [3]


def test_any_takes_any_model_with_enough_gpus():
    gpus = parse_nvidia_smi(MIXED)
    assert choose(["ANY"], gpus, set()) == [0]
    assert choose(["ANY"], gpus, {0}) == [1]
    assert choose(["ANY:2"], gpus, set()) == [1, 2]  # two of one model
    assert choose(["ANY:2"], gpus, {1}) is None


def test_allocator_is_exclusive_until_release():
    alloc = GpuAllocator(parse_nvidia_smi(MIXED))
    assert alloc.place("ta-1", ["A100-80GB"]).ids == (1,)
    assert alloc.place("ta-2", ["A100-80GB"]).ids == (2,)
    waiting = alloc.place("ta-3", ["A100-80GB"])
    assert not waiting.ids and "2 of 2 matching GPUs are in use" in waiting.wait
    alloc.release("ta-1")
    assert alloc.place("ta-3", ["A100-80GB"]).ids == (1,)


def test_reasons_say_why():
    gpus = parse_nvidia_smi(MIXED)
    none = waiting_reason(["H100"], [], set(), "nvidia-smi not found")
    assert none == "waiting for a GPU (H100): this machine has no GPUs (nvidia-smi not found)"
    wrong = waiting_reason(["L4", "B200"], gpus, set())
    assert "L4, then B200" in wrong and "none that fit" in wrong and "2x A100-80GB" in wrong
    too_many = waiting_reason(["H100:2"], gpus, set())
    assert "none that fit" in too_many
    busy = waiting_reason(["H100"], gpus, {0})
    assert busy.endswith("1 of 1 matching GPUs are in use")


def test_a_request_no_gpu_here_could_meet_fails_at_once_naming_the_cpu_opt_in():
    """No GPUs at all, or none of the model (or not enough of one model): waiting would be forever."""
    for request, gpus in ((["T4"], []), (["L4", "B200"], parse_nvidia_smi(MIXED)),
                          (["H100:2"], parse_nvidia_smi(MIXED))):
        decision = place(request, gpus, set(), note="nvidia-smi not found")
        assert decision.fail is not None and not decision.wait and not decision.ids and not decision.cpu
        assert "SHOAL_GPU_FALLBACK=cpu" in decision.fail and "can never run here" in decision.fail
    assert "has no GPUs (nvidia-smi not found)" in place(["T4"], [], set(), note="nvidia-smi not found").fail


def test_busy_matching_gpus_are_waited_for_even_with_the_cpu_fallback():
    gpus = parse_nvidia_smi(MIXED)
    decision = place(["H100"], gpus, {0}, fallback="cpu")
    assert decision.wait is not None and "1 of 1 matching GPUs are in use" in decision.wait
    assert place(["T4"], gpus, set(), fallback="cpu") == Placement(ids=(3,))


def test_the_cpu_fallback_runs_what_could_never_be_placed_and_is_off_by_default():
    assert place(["T4"], [], set(), fallback="cpu") == Placement(cpu=True)
    assert place(["T4"], [], set()).fail is not None
    alloc = GpuAllocator([], "", fallback="cpu")
    assert alloc.place("ta-1", ["A100"]).cpu and alloc.busy == set()


def test_the_fallback_setting_is_checked():
    assert fallback_setting({}) == ""
    assert fallback_setting({"SHOAL_GPU_FALLBACK": " CPU "}) == "cpu"
    assert fallback_setting({"SHOAL_GPU_FALLBACK": "off"}) == "off"
    with pytest.raises(ValueError, match="SHOAL_GPU_FALLBACK must be"):
        fallback_setting({"SHOAL_GPU_FALLBACK": "gpu"})


def test_a_cpu_request_above_the_machines_cores_is_described() -> None:
    from shoal.backends.local import cpu_shortfall

    assert cpu_shortfall(None, 2) is None and cpu_shortfall(2.0, 2) is None and cpu_shortfall([1.0, 8.0], 2) is None
    assert cpu_shortfall(4.0, 2) == "cpu=4 asked, but this machine has 2 cores: its containers share those 2 " \
                                    "(no more than 2 at once)"
    assert "has 1 core:" in cpu_shortfall((3.0, 4.0), 1)
