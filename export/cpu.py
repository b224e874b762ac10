"""What the host CPU can do for int8 inference: its instruction-set flags.

A pure parser over ``/proc/cpuinfo`` text and ``platform.machine()``, so the
int8 presets (``mnist-export --int8-target auto``), the benchmarks and the GPU
check name the same features. Standard library only.

The flags that matter for ONNX Runtime's int8 kernels (MLAS):

* ``avx2``: 8-bit products via ``vpmaddubsw``, which adds pairs of u8 x s8
  products into int16 and can saturate (hence 7-bit "reduce range" weights).
* ``avx512_vnni`` / ``avx_vnni``: ``vpdpbusd`` multiplies u8 x s8 and
  accumulates in int32 in one instruction: no saturation, about 3-4x the
  int8 throughput of AVX2 per cycle.
* ``avx512_bf16``, ``amx_tile``/``amx_int8``: reported for the record.
* ARM ``asimddp`` (SDOT/UDOT) and ``i8mm`` (SMMLA/USMMLA): the ARM int8
  dot-product instructions.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")

# The features printed with every benchmark table, in this order.
REPORTED_FLAGS: tuple[str, ...] = (
    "avx2",
    "avx512f",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "amx_tile",
    "amx_int8",
    "asimd",
    "asimddp",
    "i8mm",
)
X86_MACHINES = frozenset({"x86_64", "amd64", "i386", "i686", "x86"})
ARM64_MACHINES = frozenset({"aarch64", "arm64", "armv8l"})


@dataclass(frozen=True)
class CpuFeatures:
    """A CPU's architecture and instruction-set flags.

    Attributes:
        machine: ``platform.machine()`` lower-cased (``x86_64``, ``aarch64``, ...).
        model: the CPU's model name, when known.
        flags: every flag the kernel reports (x86 ``flags``, ARM ``Features``).
    """

    machine: str
    model: str = ""
    flags: frozenset[str] = frozenset()

    @property
    def is_x86(self) -> bool:
        return self.machine in X86_MACHINES

    @property
    def is_arm64(self) -> bool:
        return self.machine in ARM64_MACHINES

    @property
    def vnni(self) -> bool:
        """Has an int8 dot-product instruction that accumulates in int32 (AVX-512 VNNI or AVX-VNNI)."""
        return self.is_x86 and bool({"avx512_vnni", "avx_vnni"} & self.flags)

    @property
    def avx2(self) -> bool:
        return self.is_x86 and "avx2" in self.flags

    @property
    def reported(self) -> tuple[str, ...]:
        """The :data:`REPORTED_FLAGS` this CPU has, in that order."""
        return tuple(f for f in REPORTED_FLAGS if f in self.flags)

    def summary(self) -> str:
        """One line: ``x86_64: avx2 avx512_vnni`` (or ``x86_64: none of avx2, ...``)."""
        have = " ".join(self.reported)
        return f"{self.machine or 'unknown'}: {have or 'none of ' + ', '.join(REPORTED_FLAGS)}"


def parse_cpuinfo(text: str, machine: str) -> CpuFeatures:
    """Read the flags of the first processor in ``/proc/cpuinfo`` text.

    Args:
        text: the file's contents (x86 ``flags : ...`` or ARM ``Features : ...`` lines).
        machine: ``platform.machine()``.

    Returns:
        The features; an empty flag set when the text has no flags line.
    """
    flags: frozenset[str] = frozenset()
    model = ""
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip().lower()
        if key in ("flags", "features") and not flags:
            flags = frozenset(value.split())
        elif key in ("model name", "cpu model", "hardware") and not model:
            model = value.strip()
    return CpuFeatures(machine=machine.strip().lower(), model=model, flags=flags)


def host_cpu_features(cpuinfo: Path = CPUINFO) -> CpuFeatures:
    """This machine's CPU features (no flags where ``cpuinfo`` cannot be read, e.g. macOS)."""
    try:
        text = cpuinfo.read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, platform.machine())
