"""``mnist-export``: checkpoint -> validated ONNX files (fp32, int8, edge variants) + reports.

Parses options, calls :func:`mnist_edge.export.pipeline.export_onnx` (or
:func:`~mnist_edge.export.artifacts.check_artifacts` with ``--parity-only``),
prints the parity table. Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

from pathlib import Path

import click

from mnist_edge.export.config import (
    INT8_TARGETS,
    SUPPORTED_OPSETS,
    ExportConfig,
)
from mnist_edge.runtime.command import command
from mnist_edge.runtime.frontend import AliasedOption
from mnist_edge.runtime.layout import DEFAULT, Artifacts
from mnist_edge.train.config import check_output_dir

_D = ExportConfig()  # the options' defaults come from the config; each is named like its field


def _progress(line: str) -> None:
    click.echo(line, err=True)


@command("mnist-export", extras=("export", "cpu"), show_default=True)
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path, dir_okay=False),
    default=DEFAULT.checkpoint,
    help="Checkpoint written by mnist-train.",
)
@click.option(
    "--out-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=DEFAULT.root,
    help="Where the .onnx files, export.json and report.md go.",
)
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=_D.data_dir,
    help="Dataset folder (test set for parity, training images for calibration).",
)
@click.option(
    "--opset",
    type=click.IntRange(SUPPORTED_OPSETS.start, SUPPORTED_OPSETS.stop - 1),
    default=_D.opset,
    help="ONNX opset (tested range).",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0, min_open=True),
    default=_D.tolerance,
    help="Max |ONNX fp32 - PyTorch| over all probabilities.",
)
@click.option(
    "--int8-max-drop",
    type=click.FloatRange(0, 1, max_open=True),
    default=_D.int8_max_drop,
    help="Max accuracy drop of int8 vs PyTorch (0.002 = 0.2 points).",
)
@click.option(
    "--calibration-images",
    type=click.IntRange(min=1),
    default=_D.calibration_images,
    help="Training images used to calibrate int8.",
)
@click.option("--int8/--no-int8", default=_D.int8, help="Also write the int8 (QDQ) model.")
@click.option(
    "--int8-target",
    type=click.Choice(INT8_TARGETS),
    default=_D.int8_target,
    help="CPU family the int8 file is tuned for; auto reads this machine's CPU flags "
    "(x86-vnni: AVX-512 VNNI/AVX-VNNI, x86-avx2: AVX2 without VNNI, arm64, portable: any).",
)
@click.option(
    "--fixed-batch",
    type=click.IntRange(min=1),
    default=None,
    help="Also write files with this static batch size (NPUs, compilers).",
)
@click.option(
    "--uint8-input", is_flag=True, help="Also write files taking uint8 pixels [batch, 28, 28]."
)
@click.option(
    "--ort",
    is_flag=True,
    help="Also write .ort files and mnist.required_operators.config (minimal/mobile builds).",
)
@click.option(
    "--pixels/--no-pixels",
    default=_D.pixels,
    help="Also write the pixels-in models (mnist.pixels[.int8].onnx: uint8 [height, width] "
    "pictures, preprocessing inside) and mnist.meta.json.",
)
@click.option(
    "--pixels-images",
    type=click.IntRange(min=1),
    default=_D.pixels_images,
    help="Test digits per validation variant of the pixels-in models (16 variants; "
    "--test-limit caps it).",
)
@click.option(
    "--allow-mismatch",
    is_flag=True,
    help="Write files even if validation fails (failures are reported).",
)
@click.option(
    "--test-limit",
    cls=AliasedOption,
    aliases=("--eval-limit",),
    type=click.IntRange(min=1),
    default=None,
    help="Compare on the first N test images only [default: all].",
)
@click.option(
    "--parity-only",
    is_flag=True,
    help="Export nothing: compare the existing files in --out-dir with the checkpoint.",
)
@click.option(
    "--c",
    "c_library",
    is_flag=True,
    help="Export nothing else: write the C libraries (--out-dir/c/fp32 and c/int8) from the "
    ".onnx files in --out-dir, validated against ONNX Runtime (docs/c.md).",
)
def main(
    checkpoint: Path,
    out_dir: Path,
    data_dir: Path,
    opset: int,
    tolerance: float,
    int8_max_drop: float,
    calibration_images: int,
    int8: bool,
    int8_target: str,
    fixed_batch: int | None,
    uint8_input: bool,
    ort: bool,
    pixels: bool,
    pixels_images: int,
    allow_mismatch: bool,
    test_limit: int | None,
    parity_only: bool,
    c_library: bool,
) -> None:
    """Export a checkpoint (mnist-train's model.pt) to validated ONNX files.

    Writes these files into --out-dir, and only once every one of them has
    passed its checks on the test set (nothing is written when a check fails):

    \b
      mnist.onnx                fp32, float32 [batch, 1, 28, 28]
      mnist.int8.onnx           int8 (not with --no-int8)
      mnist.pixels.onnx         pixels-in: uint8 [height, width] pictures,
      mnist.pixels.int8.onnx      preprocessing inside (not with --no-pixels)
      mnist.meta.json           the pixels-in files' metadata (not with --no-pixels)
      mnist[.int8][.batchN][.uint8].onnx
                                with --fixed-batch N and/or --uint8-input (one variant)
      NAME.ort                  with --ort: an ORT-format twin of each .onnx file
      mnist.required_operators.config  with --ort: the operators the .ort files use
      export.json               the export report
      report.md                 its Export section (the file is kept, the section replaced)

    With --parity-only it writes nothing. With --c it writes only the C libraries
    c/fp32/ and c/int8/ and c/c.json, from the .onnx files already in --out-dir.
    """
    from mnist_edge.export.artifacts import check_artifacts
    from mnist_edge.export.pipeline import export_onnx
    from mnist_edge.export.report import parity_table
    from mnist_edge.export.verify import ValidationError

    if c_library:
        _export_c(out_dir, data_dir, test_limit, pixels_images)
        return
    if not checkpoint.is_file():
        raise click.BadParameter(
            f"{checkpoint} does not exist; train one with mnist-train (from a clone: make train) "
            "or pass --checkpoint PATH",
            param_hint="--checkpoint",
        )
    try:
        config = ExportConfig(
            opset=opset,
            tolerance=tolerance,
            int8=int8,
            int8_target=int8_target,
            int8_max_drop=int8_max_drop,
            calibration_images=calibration_images,
            fixed_batch=fixed_batch,
            uint8_input=uint8_input,
            ort=ort,
            pixels=pixels,
            pixels_images=pixels_images,
            allow_mismatch=allow_mismatch,
            data_dir=data_dir,
            test_limit=test_limit,
        )
        if not parity_only:  # a folder that cannot take the files fails now, not after the export
            check_output_dir(out_dir)
        if parity_only:
            reports = check_artifacts(checkpoint, out_dir, config, _progress)
            sizes = {r.name: (out_dir / r.name).stat().st_size for r in reports}
            reference = reports[0].reference_accuracy if reports else float("nan")
            click.echo(parity_table(reports, reference, sizes))
            failed = [r for r in reports if not r.ok]
            if failed:
                raise click.ClickException(
                    f"{len(failed)} of {len(reports)} files out of tolerance ({', '.join(r.name for r in failed)}); "
                    "run mnist-export without --parity-only to export them again"
                )
            return
        report = export_onnx(checkpoint, out_dir, config, _progress)
    except ValidationError as exc:
        for failure in exc.failures:
            click.echo(f"  - {failure}", err=True)
        old = sorted(p.name for p in out_dir.glob("mnist*.onnx"))
        kept = (
            f" (the existing {', '.join(old)} in {out_dir} are from an earlier export, left as they were)"
            if old
            else ""
        )
        raise click.ClickException(
            f"{exc.summary}{kept}. Fix the cause, or pass --allow-mismatch to write the files anyway"
        ) from exc

    sizes = {f.path.name: f.size_bytes for f in report.files}
    click.echo(
        parity_table([f.parity for f in report.files if f.parity], report.pytorch_accuracy, sizes)
    )
    for f in report.files:
        click.echo(f"wrote {f.path} ({f.size_bytes / 1024:.1f} KiB)")
    if report.required_operators:
        click.echo(f"wrote {report.required_operators}")
    art = Artifacts(out_dir)
    click.echo(f"wrote {art.export_report} and the Export section of {art.report}")
    if report.meta_json:
        click.echo(f"wrote {report.meta_json}")
    if not report.ok:
        click.echo(
            f"WARNING: {len(report.failures)} validation failures; files written because of --allow-mismatch",
            err=True,
        )


def _export_c(out_dir: Path, data_dir: Path, test_limit: int | None, pixels_images: int) -> None:
    """``--c``: the C libraries from the files already in ``out_dir``."""
    from mnist_edge.export.c.build import BuildError
    from mnist_edge.export.c.check import CConfig, CExportError, export_c
    from mnist_edge.export.c.network import NetworkError

    config = CConfig(data_dir=data_dir, digit_limit=test_limit, pictures_per_variant=pixels_images)
    try:
        written = export_c(out_dir, out_dir / "c", config, _progress)
    except CExportError as exc:
        for failure in exc.failures:
            click.echo(f"  - {failure}", err=True)
        raise click.ClickException(exc.summary) from exc
    except (BuildError, NetworkError) as exc:
        raise click.ClickException(str(exc)) from exc
    for lib, check in written:
        t = lib.target
        m4 = (
            f"; Cortex-M4: flash {t.flash / 1024:.1f} KiB, static RAM {t.static_ram} B, "
            f"stack <= {lib.stack_bound} B"
            if t
            else ""
        )
        click.echo(
            f"wrote {lib.folder}/ ({lib.precision}: {check.digits} digits, labels "
            f"{check.agreement:.2%} equal to ONNX Runtime, max |dp| {check.max_abs_diff:.1e}; "
            f"{check.pictures} frames {check.frame_agreement:.2%} equal to the pixels-in file{m4})"
        )
    click.echo(f"wrote {out_dir / 'c' / 'c.json'}")
