"""Copy a validated export into the package: the bundled reference model (``make bundle``).

The package ships the reference recipe's files (:data:`BUNDLE_FILES`) in
``runtime/models/`` so that ``mnist-infer``, ``mnist-serve``, the web page and
``mnist_edge.runtime.classify`` work before anything is trained. Only files
that passed the export's own validation are copied: :func:`check_bundle`
reads the export report (``export.json``) and each file's metadata, collects
every failure, and :func:`bundle` copies nothing unless there is none.

``python -m mnist_edge.export.bundle`` is the command (what ``make bundle`` runs).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mnist_edge.runtime import __version__
from mnist_edge.runtime.atomic import atomic_path
from mnist_edge.runtime.errors import MnistEdgeError
from mnist_edge.runtime.layout import BUNDLED_DIR, DEFAULT, META_JSON, Artifacts, model_name
from mnist_edge.train.config import TrainConfig

BUNDLE_MODELS = (
    model_name("fp32"),
    model_name("int8"),
    model_name("fp32", pixels=True),
    model_name("int8", pixels=True),
)
BUNDLE_FILES = (*BUNDLE_MODELS, META_JSON)
"""What the package ships: the four model files of one export and their ``mnist.meta.json``."""


class BundleError(MnistEdgeError, ValueError):
    """The export cannot be bundled; ``failures`` lists every reason."""

    def __init__(self, source: Path, failures: list[str]) -> None:
        more = f" (and {len(failures) - 1} more)" if len(failures) > 1 else ""
        super().__init__(f"{source} cannot be bundled: {failures[0]}{more}")
        self.source = source
        self.failures = failures


@dataclass(frozen=True)
class BundleReport:
    """What :func:`bundle` copied.

    Attributes:
        files: the files written in the destination, in :data:`BUNDLE_FILES` order.
        source_sha256: the checkpoint the models were exported from.
        test_accuracy: model file name -> accuracy its metadata states.
    """

    files: tuple[Path, ...]
    source_sha256: str
    test_accuracy: Mapping[str, float]


def _props(path: Path) -> dict[str, str]:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {p.key: p.value for p in model.metadata_props}


def check_bundle(source: Path) -> tuple[str, dict[str, float]]:
    """Check that the export in ``source`` passed validation and is the reference recipe.

    Every file of :data:`BUNDLE_FILES` must exist; ``export.json`` must say the
    export passed, with each model written and within its tolerance, at the
    size it has now; each model's metadata must say ``validation: passed``,
    name the checkpoint the report names and carry the reference recipe
    (:class:`~mnist_edge.train.config.TrainConfig`'s defaults); ``mnist.meta.json``
    must name the same checkpoint.

    Returns:
        The checkpoint's SHA-256 and each model's stated test accuracy.

    Raises:
        BundleError: listing every failure.
    """
    art = Artifacts(source)
    failures: list[str] = []
    missing = [name for name in BUNDLE_FILES if not (source / name).is_file()]
    if missing:
        failures.append(f"{', '.join(missing)} not found (the pixels-in files need --pixels)")
    try:
        report: dict[str, Any] = json.loads(art.export_report.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(source, [*failures, f"cannot read {art.export_report}: {exc}"]) from None
    if report.get("ok") is not True or report.get("failures"):
        failures.append(f"{art.export_report} says the export failed validation")
    sha = str(report.get("checkpoint_sha256") or "")
    if len(sha) != 64:
        failures.append(f"{art.export_report} names no checkpoint SHA-256")
    entries = {f.get("file"): f for f in report.get("files", [])}
    reference = {k: json.loads(json.dumps(v)) for k, v in TrainConfig().recipe().items()}
    accuracy: dict[str, float] = {}
    for name in BUNDLE_MODELS:
        path = source / name
        if not path.is_file():
            continue
        entry = entries.get(name)
        parity = (entry or {}).get("parity") or {}
        if entry is None or not entry.get("written") or parity.get("ok") is not True:
            failures.append(f"{name}: not validated by this export ({art.export_report})")
        elif entry.get("size_bytes") != path.stat().st_size:
            failures.append(f"{name}: changed since the export validated it (size differs)")
        props = _props(path)
        if props.get("mnist_edge.validation") != "passed":
            failures.append(
                f"{name}: its metadata says validation {props.get('mnist_edge.validation')!r}"
            )
        if props.get("mnist_edge.source_sha256") != sha:
            failures.append(
                f"{name}: exported from another checkpoint than {art.export_report} names"
            )
        recipe = json.loads(props.get("mnist_edge.recipe") or "{}")
        changed = sorted(k for k in reference if recipe.get(k) != reference[k])
        if changed:
            failures.append(
                f"{name}: not the reference recipe ({', '.join(f'{k}={recipe.get(k)!r}' for k in changed)})"
            )
        try:
            accuracy[name] = float(props["test_accuracy"])
        except (KeyError, ValueError):
            failures.append(f"{name}: its metadata states no test_accuracy")
    if art.meta_json.is_file():
        try:
            meta = json.loads(art.meta_json.read_text(encoding="utf-8"))
        except ValueError as exc:
            failures.append(f"{art.meta_json} does not parse: {exc}")
        else:
            if meta.get("source_sha256") != sha:
                failures.append(f"{META_JSON}: exported from another checkpoint")
    if failures:
        raise BundleError(source, failures)
    return sha, accuracy


def bundle(source: Path = DEFAULT.root, dest: Path = BUNDLED_DIR) -> BundleReport:
    """Copy the validated export in ``source`` into ``dest`` (the package's ``runtime/models``).

    Checks everything first (:func:`check_bundle`), then writes each file
    atomically; ``dest`` keeps its old files when a check fails.

    Raises:
        BundleError: the export failed validation, or is not the reference recipe.
        OSError: ``dest`` cannot be written.
    """
    sha, accuracy = check_bundle(source)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name in BUNDLE_FILES:
        with atomic_path(dest / name) as tmp:
            shutil.copyfile(source / name, tmp)
        written.append(dest / name)
    return BundleReport(tuple(written), sha, accuracy)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--artifacts",
    "source",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT.root,
    show_default=True,
    help="The export to bundle (what `make train export` wrote).",
)
@click.option(
    "--out-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=BUNDLED_DIR,
    help="Where the package keeps its bundled model.  [default: the package's runtime/models]",
)
@click.version_option(__version__, prog_name="mnist-edge bundle")
def main(source: Path, out_dir: Path) -> None:
    """Copy the validated reference model from ARTIFACTS into the package (fp32, int8, pixels-in, meta)."""
    try:
        report = bundle(source, out_dir)
    except BundleError as exc:
        for failure in exc.failures:
            click.echo(f"  - {failure}", err=True)
        raise click.ClickException(
            f"{source} cannot be bundled (see above); `make train export` makes the reference model"
        ) from None
    except OSError as exc:
        raise click.ClickException(f"cannot write {out_dir}: {exc.strerror or exc}") from None
    for path in report.files:
        click.echo(f"wrote {path} ({path.stat().st_size / 1024:.1f} KiB)")
    accuracies = ", ".join(f"{n} {a:.4f}" for n, a in report.test_accuracy.items())
    click.echo(f"bundled checkpoint {report.source_sha256[:12]}; test accuracy {accuracies}")


if __name__ == "__main__":
    sys.exit(main())
