"""The export stage's outputs, from the trained deploy net (what ``scripts/export.py`` runs).

Under ``results/export/``:

* ``caffe/deploy.{prototxt,caffemodel}``: BatchNorm/Scale folded, plus the runtime-safe rewrites
  (``ssdlite_coco.export.rewrite``); ``fold_check.json``: folded against unfolded in pycaffe;
* ``caffe-heads/heads.{prototxt,caffemodel}``, ``priors.npy``, ``decode.json`` (``export.heads``);
* ``caffe-clip/{deploy,heads}.{prototxt,caffemodel}``: both Caffe nets with every ReLU6 as BVLC Caffe's ``Clip``
  (``export.rewrite.relu6_as_clip``), for toolchains that do not know ReLU6;
* ``onnx/heads.onnx`` (``export.onnx_heads``);
* ``edge/<toolchain>/<precision>/``: the model each edge toolchain of ``export.runtimes`` converted (``export.edge``);
* ``preprocess.json``, ``calibration/`` (N images of the calibration split, training in the workflow, as the
  nets take them, ``.npy`` + ``list.txt``);
* ``verify.json`` and ``verify.md``: every runtime against pycaffe (``export.verify``).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ssdlite_coco.caffe_tools.prototxt import format_prototxt
from ssdlite_coco.common.atomic import atomic_path, atomic_write_text
from ssdlite_coco.export.fold import fold_deploy, input_shape, save_net
from ssdlite_coco.export.heads import detection_output_settings, heads_net
from ssdlite_coco.export.onnx_heads import write_heads_onnx
from ssdlite_coco.export.preprocess import preprocess_as, preprocess_document
from ssdlite_coco.export.rewrite import relu6_as_clip, rename_duplicate_layers, rewrite_one_by_one_inputs


@dataclass(frozen=True)
class ExportPaths:
    root: Path

    def caffe_net(self, folder: str, name: str) -> tuple[Path, Path]:
        """``folder/name.prototxt`` and ``folder/name.caffemodel`` under the export root."""
        return self.root / folder / f"{name}.prototxt", self.root / folder / f"{name}.caffemodel"

    @property
    def deploy(self) -> tuple[Path, Path]:
        return self.caffe_net("caffe", "deploy")

    @property
    def heads(self) -> tuple[Path, Path]:
        return self.caffe_net("caffe-heads", "heads")

    @property
    def deploy_clip(self) -> tuple[Path, Path]:
        return self.caffe_net("caffe-clip", "deploy")

    @property
    def heads_clip(self) -> tuple[Path, Path]:
        return self.caffe_net("caffe-clip", "heads")

    @property
    def priors(self) -> Path:
        return self.root / "caffe-heads/priors.npy"

    @property
    def decode(self) -> Path:
        return self.root / "caffe-heads/decode.json"

    @property
    def onnx(self) -> Path:
        return self.root / "onnx/heads.onnx"

    def edge(self, toolchain: str, precision: str) -> Path:
        """An edge toolchain's converted model (``export.edge``) for one precision."""
        return self.root / "edge" / toolchain / precision


def blob_shapes(net_param, params: dict[str, list[np.ndarray]] | None = None) -> tuple[dict[str, tuple], Any]:
    """Every blob's shape of ``net_param`` (a pycaffe net of it, forward once; params copied if given)."""
    import caffe

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "net.prototxt"
        path.write_text(format_prototxt(net_param))
        net = caffe.Net(str(path), caffe.TEST)
    for name, arrays in (params or {}).items():
        for blob, array in zip(net.params.get(name, []), arrays, strict=False):
            blob.data[...] = array
    net.forward()
    return {name: tuple(blob.data.shape) for name, blob in net.blobs.items()}, net


def make_deploy(deploy_net, weights, paths: ExportPaths, rewrite: bool = True) -> dict[str, Any]:
    """Fold, rewrite (unless ``rewrite`` is false), write ``caffe/deploy.*`` and ``caffe-clip/deploy.*``."""
    folded_param, params, folded = fold_deploy(deploy_net, weights)
    rewrites = []
    if rewrite:
        shapes, _ = blob_shapes(folded_param)
        rewrites = rewrite_one_by_one_inputs(folded_param, params, shapes)
        rewrites += rename_duplicate_layers(folded_param, set(params))
    save_net(folded_param, params, *paths.deploy)
    save_net(relu6_as_clip(folded_param), params, *paths.deploy_clip)
    return {"param": folded_param, "params": params, "folded": folded, "rewrites": rewrites}


def make_heads(deploy: dict[str, Any], paths: ExportPaths, source: str) -> dict[str, Any]:
    """Write ``caffe-heads/``, its Clip variant, ``priors.npy``, ``decode.json`` and ``onnx/heads.onnx``."""
    param, params = deploy["param"], deploy["params"]
    _, net = blob_shapes(param, params)
    heads = heads_net(param, source)
    settings = detection_output_settings(param, source)
    detection = next(layer for layer in param.layer if layer.type == "DetectionOutput")
    priors = np.asarray(net.blobs[detection.bottom[2]].data, np.float32).reshape(2, -1, 4)
    heads_params = {layer.name: params[layer.name] for layer in heads.layer if layer.name in params}
    save_net(heads, heads_params, *paths.heads)
    save_net(relu6_as_clip(heads), heads_params, *paths.heads_clip)
    with atomic_path(paths.priors) as tmp:
        with open(tmp, "wb") as handle:
            np.save(handle, priors)
    atomic_write_text(paths.decode, json.dumps(settings, indent=2) + "\n")
    shapes, _ = blob_shapes(heads, heads_params)
    write_heads_onnx(heads, heads_params, shapes, paths.onnx)
    return {
        "priors": priors,
        "settings": settings,
        "num_priors": int(priors.shape[1]),
        "shapes": shapes,
        "loc_blob": detection.bottom[0],
        "conf_blob": detection.bottom[1],
    }


def write_preprocess(transform: dict[str, Any], deploy_net, heads: dict[str, Any], out_path) -> dict[str, Any]:
    """``preprocess.json``: the input and the layout of every output of the exported nets."""
    document = preprocess_document(transform, input_shape(deploy_net))
    priors, classes = heads["num_priors"], heads["settings"]["num_classes"]
    document["outputs"] = {
        "caffe/deploy detection_out (pycaffe)": "[1, 1, N, 7]: image, label, score, xmin, ymin, xmax, ymax "
        "(normalized); when nothing is found, one row per image: its index (0) followed by six -1",
        "caffe/deploy detection_out (OpenCV DNN)": "[1, 1, keep_top_k, 7], padded with rows of zeros",
        "caffe/deploy detection_out (MNN)": "[1, 1, N, 6]: label, score, xmin, ymin, xmax, ymax",
        "heads loc": f"[1, {priors}, 4]: CENTER_SIZE offsets of each prior (decode with priors.npy)",
        "heads scores": f"[1, {priors}, {classes}]: class scores after the net's activation; column "
        f"{heads['settings']['background_label_id']} is the background",
        "priors.npy": f"[2, {priors}, 4]: prior boxes (xmin, ymin, xmax, ymax, normalized), then their variances",
    }
    document["decode"] = "ssdlite_coco.export.decode.decode_detections(loc, scores, priors, decode.json)"
    atomic_write_text(out_path, json.dumps(document, indent=2) + "\n")
    return document


def write_calibration(images: list[Path], transform: dict[str, Any], input_hw, out_dir: str | os.PathLike) -> int:
    """N preprocessed images as ``NNNN.npy`` (``[1, C, H, W]`` float32) and ``list.txt``."""
    lines = []
    with atomic_path(out_dir, directory=True) as tmp:
        for index, path in enumerate(images):
            array = preprocess_as(path, transform, input_hw)
            name = f"{index:04d}.npy"
            np.save(tmp / name, array[None])
            lines.append(f"{name}\t{path.name}")
        (tmp / "list.txt").write_text("\n".join(lines) + ("\n" if lines else ""))
    return len(lines)
