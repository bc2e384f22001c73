"""train.precision auto: bf16 autocast where the hardware computes bf16 natively, fp32 on other CPUs."""

from __future__ import annotations

import pytest

from fellrec.config import TrainArgs
from fellrec.federation.precision import precision_for

AVX512 = {"fpu", "sse2", "avx2", "avx512f", "avx512bw"}


@pytest.mark.parametrize("flags, expected", [
    (AVX512, "32-true"),                        # AVX-512 without its bf16 extension: fp32
    (AVX512 | {"avx512_bf16"}, "bf16-mixed"),   # e.g. Zen 4, this project's machines
    (AVX512 | {"amx_bf16", "amx_tile"}, "bf16-mixed"),  # Sapphire Rapids
    (set(), "32-true"),                         # flags unknown (not Linux): the safe choice
])
def test_auto_precision_follows_the_cpu_flags(flags, expected):
    assert precision_for(TrainArgs(), "cpu", cpu_flags=flags) == expected


def test_auto_is_bf16_on_a_gpu_and_an_explicit_choice_always_wins():
    assert precision_for(TrainArgs(), "cuda", cpu_flags=set()) == "bf16-mixed"
    assert precision_for(TrainArgs(precision="32-true"), "cpu", cpu_flags={"avx512_bf16"}) == "32-true"
    assert precision_for(TrainArgs(precision="bf16-mixed"), "cpu", cpu_flags=set()) == "bf16-mixed"
