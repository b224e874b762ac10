"""The metadata contract (runtime/metadata.py): the int8 preset keys, and files from before them."""

from __future__ import annotations

from mnist_edge.runtime.metadata import ModelMetadata


def test_int8_preset_keys_round_trip() -> None:
    meta = ModelMetadata(
        precision="int8",
        int8_target="x86-avx2",
        int8_tuned_for="x86_64 avx2 (no vnni)",
        export_cpu="x86_64: avx2",
    )
    props = meta.to_props()
    assert props["mnist_edge.int8_target"] == "x86-avx2"
    assert props["mnist_edge.export_cpu"] == "x86_64: avx2"
    back = ModelMetadata.from_props(props)
    assert (back.int8_target, back.int8_tuned_for, back.export_cpu) == (
        "x86-avx2",
        "x86_64 avx2 (no vnni)",
        "x86_64: avx2",
    )


def test_fp32_files_carry_no_int8_keys() -> None:
    assert not any("int8" in key or "export_cpu" in key for key in ModelMetadata().to_props())


def test_files_from_before_the_presets_still_parse() -> None:
    old = ModelMetadata(precision="int8").to_props()  # what an older export wrote
    meta = ModelMetadata.from_props(old)
    assert meta.from_file and meta.precision == "int8"
    assert (meta.int8_target, meta.int8_tuned_for, meta.export_cpu) == ("", "", "")
