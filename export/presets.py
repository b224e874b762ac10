"""int8 presets per CPU family (``mnist-export --int8-target``), in the spirit of optimum's
per-CPU quantization configs.

Every preset quantizes the same graph (Conv -> Relu -> MaxPool blocks, see
:meth:`mnist_edge.train.model.ConvNet.forward`) to static QDQ with int8
per-channel weights and uint8 activations, the logits left float. What differs
is what the CPU's int8 instructions need:

============  ==================================  ========================================
preset        for                                 recipe
============  ==================================  ========================================
x86-vnni      x86 with AVX-512 VNNI or AVX-VNNI   8-bit weights: ``vpdpbusd`` accumulates
              (Ice Lake+, Zen 4+, Alder Lake+)    u8 x s8 in int32, nothing saturates
x86-avx2      x86 with AVX2 but no VNNI           7-bit weights (reduce range): ``vpmaddubsw``
              (Haswell-Skylake, Zen 1-3)          adds u8 x s8 pairs in int16, 8-bit ones
                                                  can saturate (ONNX Runtime's guide)
arm64         ARM64 (Graviton, Ampere, Apple,     8-bit weights: SDOT/UDOT and I8MM
              Snapdragon)                         accumulate in int32
portable      anything (unknown CPU, wasm,        7-bit weights: exact on every int8 kernel,
              NPUs reading QDQ)                   with or without a dot-product instruction
============  ==================================  ========================================

``auto`` picks one from the exporting host's CPU flags (:func:`resolve_target`);
export on (or pass the target of) the machine that will run the file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mnist_edge.export.config import INT8_TARGETS, ExportConfigError
from mnist_edge.export.cpu import CpuFeatures, host_cpu_features
from mnist_edge.export.quantize import QuantizeConfig


@dataclass(frozen=True)
class Int8Preset:
    """One int8 recipe and the CPU it was tuned for.

    Attributes:
        target: the preset's name (one of :data:`~mnist_edge.export.config.INT8_TARGETS` but ``auto``).
        tuned_for: the CPU features the recipe assumes, e.g. ``"x86_64 avx512_vnni|avx_vnni"``.
        quantize: the quantizer settings.
    """

    target: str
    tuned_for: str
    quantize: QuantizeConfig


PRESETS: dict[str, Int8Preset] = {
    "x86-vnni": Int8Preset(
        "x86-vnni", "x86_64 avx512_vnni|avx_vnni", QuantizeConfig(reduce_range=False)
    ),
    "x86-avx2": Int8Preset("x86-avx2", "x86_64 avx2 (no vnni)", QuantizeConfig(reduce_range=True)),
    "arm64": Int8Preset(
        "arm64", "aarch64 asimd (asimddp/i8mm)", QuantizeConfig(reduce_range=False)
    ),
    "portable": Int8Preset("portable", "any", QuantizeConfig(reduce_range=True)),
}


def resolve_target(target: str, features: CpuFeatures) -> str:
    """The concrete preset name for ``target`` (``auto`` reads ``features``).

    Raises:
        ExportConfigError: ``target`` is not one of the known names.
    """
    if target not in INT8_TARGETS:
        raise ExportConfigError(f"int8 target {target!r} is not one of {', '.join(INT8_TARGETS)}")
    if target != "auto":
        return target
    if features.vnni:
        return "x86-vnni"
    if features.avx2:
        return "x86-avx2"
    if features.is_arm64:
        return "arm64"
    return "portable"


def int8_preset(
    target: str, calibration_images: int, features: CpuFeatures | None = None
) -> Int8Preset:
    """The preset for ``target`` (``auto``: from ``features``, default this host's CPU).

    Args:
        target: one of :data:`~mnist_edge.export.config.INT8_TARGETS`.
        calibration_images: how many training images calibrate the activation ranges.
        features: the CPU to tune for when ``target`` is ``auto``.

    Raises:
        ExportConfigError: an unknown ``target``.
    """
    name = resolve_target(target, features or host_cpu_features())
    preset = PRESETS[name]
    return replace(preset, quantize=replace(preset.quantize, calibration_images=calibration_images))
