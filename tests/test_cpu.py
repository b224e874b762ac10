"""CPU feature detection (runtime/cpu.py) over sample /proc/cpuinfo texts."""

from __future__ import annotations

from pathlib import Path

import pytest

from mnist_edge.export.cpu import CpuFeatures, host_cpu_features, parse_cpuinfo

EPYC_AVX2 = """\
processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu vme de pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
bogomips\t: 4491.53

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu vme de pse sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 bmi2
"""

SAPPHIRE_RAPIDS = """\
processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse2 avx avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""

ALDER_LAKE = """\
model name\t: 12th Gen Intel(R) Core(TM) i7-1260P
flags\t\t: fpu sse2 avx avx2 avx_vnni
"""

GRAVITON3 = """\
processor\t: 0
BogoMIPS\t: 2100.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp sve i8mm bf16
CPU implementer\t: 0x41
"""


@pytest.mark.parametrize(
    ("text", "machine", "reported", "vnni", "arm64"),
    [
        (EPYC_AVX2, "x86_64", ("avx2",), False, False),
        (
            SAPPHIRE_RAPIDS,
            "x86_64",
            ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8"),
            True,
            False,
        ),
        (ALDER_LAKE, "x86_64", ("avx2", "avx_vnni"), True, False),
        (GRAVITON3, "aarch64", ("asimd", "asimddp", "i8mm"), False, True),
        ("", "x86_64", (), False, False),
    ],
    ids=["epyc-avx2", "sapphire-rapids", "alder-lake-avx-vnni", "graviton3", "no-cpuinfo"],
)
def test_parse_cpuinfo(text, machine, reported, vnni, arm64) -> None:
    features = parse_cpuinfo(text, machine)
    assert features.reported == reported
    assert features.vnni is vnni
    assert features.is_arm64 is arm64


def test_first_processor_and_model_name_are_read() -> None:
    features = parse_cpuinfo(EPYC_AVX2, "x86_64")
    assert features.model == "AMD EPYC"
    assert features.avx2 and "bmi2" in features.flags


def test_x86_flags_on_an_arm_machine_do_not_count() -> None:
    # A VNNI flag means nothing unless the machine is x86 (e.g. a hand-made text).
    assert not parse_cpuinfo(SAPPHIRE_RAPIDS, "aarch64").vnni


def test_summary_names_the_flags_or_says_none() -> None:
    assert parse_cpuinfo(ALDER_LAKE, "x86_64").summary() == "x86_64: avx2 avx_vnni"
    assert CpuFeatures("x86_64").summary().startswith("x86_64: none of avx2")


def test_unreadable_cpuinfo_gives_no_flags(tmp_path: Path) -> None:
    features = host_cpu_features(tmp_path / "missing")
    assert features.flags == frozenset()
    assert features.machine  # platform.machine() is still known
