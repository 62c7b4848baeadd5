"""The export stage in one call: every output of ``results/export/``, then the runtime check that gates it."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ssdlite_coco.common.atomic import atomic_write_text
from ssdlite_coco.export.fold import input_shape, load_net_params
from ssdlite_coco.export.fold_check import check_folding, judge_folding, noise_allowance
from ssdlite_coco.export.make import ExportPaths, make_deploy, make_heads, write_calibration, write_preprocess
from ssdlite_coco.export.preprocess import transform_settings
from ssdlite_coco.export.runtime_check import (
    CheckContext,
    CheckSettings,
    check_runtimes,
    runtime_factories,
    write_verify,
)
from ssdlite_coco.export.runtimes import PycaffeRuntime
from ssdlite_coco.export.settings import ExportSettings
from ssdlite_coco.export.verify import ImageCase, VerifyError


@dataclass
class ExportInputs:
    deploy_net: Path
    weights: Path
    test_net: Path
    instances: Path | None
    images: Path
    labelmap: Path | None = None
    # The split the calibration images come from (the training split in the workflow; default: the test split).
    calibration_instances: Path | None = None
    calibration_images: Path | None = None


def split_images(instances: Path, images_dir: Path, limit: int = 0) -> list[ImageCase]:
    """A split's images by image id (``limit`` > 0 keeps the first ``limit``)."""
    records = sorted(json.loads(instances.read_text())["images"], key=lambda image: image["id"])
    chosen = records[:limit] if limit > 0 else records
    return [ImageCase(images_dir / r["file_name"], r["id"], int(r["height"]), int(r["width"])) for r in chosen]


def coco_scorer(instances: Path, labelmap: Path, images: list[ImageCase]):
    """(rows, image) -> COCO detections and (detections, name) -> COCO metrics on ``images``."""
    import numpy as np

    from ssdlite_coco.evaluate.coco_scoring import score_detections
    from ssdlite_coco.evaluate.test_net import to_coco_detections
    from ssdlite_coco.labelmap import label_to_category, read_labelmap

    categories = label_to_category(read_labelmap(labelmap), str(labelmap))
    image_ids = [image.image_id for image in images]

    def to_coco(rows, image: ImageCase):
        rows7 = np.concatenate([np.zeros((len(rows), 1), np.float32), rows], axis=1)
        return to_coco_detections(rows7, 0, [(image.image_id, image.height, image.width)], categories)

    def score(detections, name: str):
        return score_detections(instances, detections, image_ids=image_ids, source=f"detections of {name}")

    return to_coco, score


def run_export(
    inputs: ExportInputs, out_dir: Path, settings: ExportSettings, threads: int, rewrite: bool = True, log=print
) -> dict[str, Any]:
    """Write every export output under ``out_dir``; raise VerifyError naming the first disagreeing runtime.

    ``threads``: of every runtime; ``rewrite=False`` skips the runtime-safe rewrites (to see a runtime fail).
    """
    paths = ExportPaths(out_dir)
    transform = transform_settings(inputs.test_net)
    _, height, width = input_shape(inputs.deploy_net)
    deploy = make_deploy(inputs.deploy_net, inputs.weights, paths, rewrite)
    log(f"folded {len(deploy['folded'])} Convolution+BatchNorm(+Scale) chains; {len(deploy['rewrites'])} rewrites")
    for rewrite in deploy["rewrites"]:
        log(f"  rewrite {rewrite.layer}: {rewrite.detail}")
    fold_images = [image.path for image in split_images(inputs.instances, inputs.images, settings.fold_check_images)]
    fold = check_folding(
        inputs.deploy_net, inputs.weights, *paths.deploy, deploy["folded"], fold_images, **_transform_args(transform)
    )
    failure = judge_folding(fold, settings.fold_tolerance, settings.fold_noise_factor)
    fold.update(folded=[vars(f) for f in deploy["folded"]])
    fold.update(rewrites=[vars(r) for r in deploy["rewrites"]], images=[str(p) for p in fold_images])
    fold["preprocessing"] = transform
    atomic_write_text(out_dir / "fold_check.json", json.dumps(fold, indent=2) + "\n")
    log(
        f"fold check: per-layer arithmetic {fold['arithmetic']['max_relative_error']:.2g} relative "
        f"(<= {fold['arithmetic']['tolerance']}); head outputs {fold['max_relative_difference']:.3g} relative, "
        f"allowed {fold['tolerance']:.3g} (the trained net's own float32 noise: "
        f"{fold['reference_noise']['max_relative_difference']:.3g})"
    )
    if failure:
        raise VerifyError(failure)
    heads = make_heads(deploy, paths, str(inputs.deploy_net))
    write_preprocess(transform, inputs.deploy_net, heads, out_dir / "preprocess.json")
    calibration = split_images(
        inputs.calibration_instances or inputs.instances,
        inputs.calibration_images or inputs.images,
        settings.calibration_images,
    )
    count = write_calibration(
        [image.path for image in calibration], transform, (height, width), out_dir / "calibration"
    )
    log(f"calibration: {count} preprocessed images of {inputs.calibration_instances or inputs.instances}")
    images = split_images(inputs.instances, inputs.images, settings.verify_images)
    scorer = coco_scorer(inputs.instances, inputs.labelmap, images) if inputs.labelmap else None
    reference = PycaffeRuntime(
        None,
        None,
        heads["loc_blob"],
        heads["conf_blob"],
        heads["settings"]["num_classes"],
        net=load_net_params(inputs.deploy_net, inputs.weights),
    )
    check = CheckSettings.of(settings, threads, noise_allowance(fold, settings.tolerance))
    with tempfile.TemporaryDirectory() as workdir:
        context = CheckContext(paths, heads, Path(workdir), threads, settings.rknn_target)
        factories = runtime_factories(settings.runtimes, context)
        result = check_runtimes(reference, factories, images, transform, (height, width), check, scorer)
    result.update(
        tolerance_floor=settings.tolerance, reference_noise=fold["reference_noise"]["max_relative_difference"]
    )
    write_verify(result, deploy["rewrites"], out_dir / "verify.json", out_dir / "verify.md")
    log((out_dir / "verify.md").read_text())
    if result["failures"]:
        raise VerifyError(result["failures"][0] + f" (all failures: {out_dir / 'verify.json'})")
    return result


def _transform_args(transform: dict[str, Any]) -> dict[str, Any]:
    return {"mean": transform["mean"], "scale": transform["scale"], "interpolation": transform["interpolation"]}
