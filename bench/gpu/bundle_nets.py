"""The GPU bundle's nets, derived from the train net and solver that scripts/make_model.py generated.

    scripts/with-caffe python bench/gpu/bundle_nets.py --model-dir MODEL --out NETS [--batches 24 64]

Writes into NETS (prototxt paths inside stay relative to the bundle's root, where Caffe runs):

* ``train_b{N}.prototxt``: the generated SSDLite-300 train net (augmentation on) at batch N;
* ``train_b{N}_nodw.prototxt``: the same with ``force_nd_im2col: true`` on every depthwise 3x3
  convolution, which is the only prototxt switch that keeps them off the depthwise kernels of patches
  0024 (CPU) and 0036 (GPU): ``depthwise3x3()`` returns false for N-d im2col, so they run Caffe's stock
  grouped im2col + GEMM path (the N-d im2col variant of it);
* ``compare.prototxt`` / ``compare_nodw.prototxt``: the train net made deterministic for the CPU/GPU
  comparison (no distortion, expansion, batch sampling or mirroring, one resize interpolation, and
  MultiBoxLoss with ``mining_type: NONE`` so that no sort of near-tied losses picks the negatives);
* ``train_b24_nodata.prototxt``: the batch-24 train net with DummyData instead of AnnotatedData (random
  images, no boxes: every prior is background) and ``mining_type: NONE``, for ``run_on_device.sh --cpu-only``
  on a machine without a CUDA driver. There the CUDA build cannot start a data layer even in CPU mode (its
  prefetch thread asks the driver for the current device), and hard-negative mining always computes the
  confidence loss on the GPU (bbox_util.cpp: ComputeConfLossGPU unless CPU_ONLY);
* ``kernels.prototxt`` / ``kernels_nodw.prototxt``: a small well-conditioned net of only the layers whose
  CUDA kernels never ran on a GPU (depthwise 3x3 at stride 1 and 2, pad 1 and 0, odd and even sizes down
  to 1x1, with and without bias; ReLU6 in place and not, its inputs crossing 0 and 6) between a Scale and
  1x1 convolutions, on DummyData, with two EuclideanLosses: CPU and GPU must agree to float rounding;
* ``solver_train.template``, ``solver_compare.template``, ``solver_init.template``: solvers with
  ``@NET@``, ``@PREFIX@`` and ``@MAX_ITER@`` for run_on_device.sh to fill in (training keeps the generated
  hyperparameters; compare: lr 1e-3, no momentum, no weight decay, so the solverstate history is lr x the gradient);
* ``layers.json``: the train net's layers as bench/caffe_vs_pytorch.py's PyTorch translation reads them,
  plus each layer's kind (depthwise 3x3, 1x1 ...) for grouping the comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parents[1]
COMPARE_LR = 1e-3  # history = lr x gradient; small, so that the second forward (iteration 1) stays meaningful


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, required=True, help="make_model.py's output (train/solver.prototxt)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the bundle's nets")
    parser.add_argument("--batches", type=int, nargs="+", default=[24, 64], help="training batch sizes")
    parser.add_argument("--compare-batch", type=int, default=8, help="batch of the CPU/GPU comparison net")
    return parser


def layer_kind(layer) -> str:
    if layer.type != "Convolution":
        return layer.type
    p = layer.convolution_param
    kernel = p.kernel_size[0] if p.kernel_size else p.kernel_h
    if p.group > 1 and p.group == p.num_output:
        return f"Convolution depthwise {kernel}x{kernel}"
    return f"Convolution {kernel}x{kernel}"


def data_layer(net):
    layers = [layer for layer in net.layer if layer.type == "AnnotatedData"]
    if len(layers) != 1:
        raise SystemExit(f"error: expected one AnnotatedData layer in the train net, found {len(layers)}")
    return layers[0]


# The device machine's cores: its caffe train decodes and augments a batch on all of them (patch 0040).
DEVICE_DATA_THREADS = 16


def with_batch(net, batch: int):
    copy = type(net)()
    copy.CopyFrom(net)
    data_layer(copy).data_param.batch_size = batch
    data_layer(copy).data_param.threads = DEVICE_DATA_THREADS
    return copy


def without_depthwise_kernels(net) -> tuple:
    copy = type(net)()
    copy.CopyFrom(net)
    changed = []
    for layer in copy.layer:
        if layer_kind(layer) == "Convolution depthwise 3x3":
            layer.convolution_param.force_nd_im2col = True
            changed.append(layer.name)
    return copy, changed


def deterministic(net, batch: int):
    from caffe.proto import caffe_pb2

    copy = with_batch(net, batch)
    data = data_layer(copy)
    transform = data.transform_param
    transform.mirror = False
    for field in ("distort_param", "expand_param", "emit_constraint", "noise_param"):
        transform.ClearField(field)
    if transform.HasField("resize_param"):
        del transform.resize_param.interp_mode[:]
        transform.resize_param.interp_mode.append(caffe_pb2.ResizeParameter.LINEAR)
    data.annotated_data_param.ClearField("batch_sampler")
    losses = [layer for layer in copy.layer if layer.type == "MultiBoxLoss"]
    if len(losses) != 1:
        raise SystemExit(f"error: expected one MultiBoxLoss layer in the train net, found {len(losses)}")
    losses[0].multibox_loss_param.mining_type = caffe_pb2.MultiBoxLossParameter.NONE
    return copy


def kernel_net(batch: int = 4, channels: int = 24, size: int = 38):
    """Scale -> depthwise 3x3 stack (the SSDLite strides, paddings and sizes) with ReLU6 -> 1x1 -> losses."""
    from caffe.proto import caffe_pb2

    net = caffe_pb2.NetParameter(name="depthwise-relu6-kernels")
    data = net.layer.add(name="data", type="DummyData", top=["data", "target_mid", "target_end"])
    sizes = {"data": size}

    def gaussian(filler, mean: float, std: float) -> None:
        filler.type, filler.mean, filler.std = "gaussian", mean, std

    def depthwise(name: str, bottom: str, stride: int, pad: int, bias: bool) -> str:
        layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        p = layer.convolution_param
        p.num_output, p.group, p.bias_term = channels, channels, bias
        p.kernel_size.append(3)
        p.stride.append(stride)
        p.pad.append(pad)
        gaussian(p.weight_filler, 0.0, 0.35)
        gaussian(p.bias_filler, 0.5, 0.5)
        sizes[name] = (sizes[bottom] + 2 * pad - 3) // stride + 1
        return name

    def relu6(name: str, bottom: str, in_place: bool) -> str:
        top = bottom if in_place else name
        net.layer.add(name=name, type="ReLU6", bottom=[bottom], top=[top])
        sizes[top] = sizes[bottom]
        return top

    def pointwise(name: str, bottom: str, outputs: int) -> str:
        layer = net.layer.add(name=name, type="Convolution", bottom=[bottom], top=[name])
        p = layer.convolution_param
        p.num_output = outputs
        p.kernel_size.append(1)
        gaussian(p.weight_filler, 0.0, 0.2)
        sizes[name] = sizes[bottom]
        return name

    scale = net.layer.add(name="scale", type="Scale", bottom=["data"], top=["scaled"])
    scale.scale_param.bias_term = True
    gaussian(scale.scale_param.filler, 1.0, 0.1)
    gaussian(scale.scale_param.bias_filler, 0.0, 0.1)
    sizes["scaled"] = size
    top = relu6("relu_a", depthwise("dw_s1_p1", "scaled", 1, 1, False), True)
    top = relu6("relu_b", depthwise("dw_s2_p1_even", top, 2, 1, True), False)  # 38 -> 19
    mid = pointwise("pw_mid", top, 8)
    top = relu6("relu_c", depthwise("dw_s2_p1_odd", top, 2, 1, False), True)  # 19 -> 10
    top = relu6("relu_d", depthwise("dw_s1_p0", top, 1, 0, True), True)  # 10 -> 8
    for step, name in enumerate(("dw_s2_8", "dw_s2_4", "dw_s2_2")):  # 8 -> 4 -> 2 -> 1
        top = relu6(f"relu_{step}", depthwise(name, top, 2, 1, step % 2 == 0), step % 2 == 1)
    end = pointwise("pw_end", top, 8)
    shapes = [(batch, channels, size, size), (batch, 8, sizes[mid], sizes[mid]), (batch, 8, sizes[end], sizes[end])]
    for shape, (mean, std) in zip(shapes, [(1.0, 3.0), (0.0, 1.0), (0.0, 1.0)], strict=True):
        data.dummy_data_param.shape.add(dim=list(shape))
        gaussian(data.dummy_data_param.data_filler.add(), mean, std)
    net.layer.add(name="loss_mid", type="EuclideanLoss", bottom=[mid, "target_mid"], top=["loss_mid"])
    net.layer.add(name="loss_end", type="EuclideanLoss", bottom=[end, "target_end"], top=["loss_end"])
    return net


def without_data_layer(net, batch: int):
    """The train net fed by DummyData: images ~ N(0, 0.5) at 300x300, one label row of -1 (no box), no mining."""
    from caffe.proto import caffe_pb2

    data = data_layer(net)
    size = data.transform_param.resize_param.height or 300
    copy = caffe_pb2.NetParameter(name=net.name)
    dummy = copy.layer.add(name="data", type="DummyData", top=list(data.top))
    for shape, filler in (((batch, 3, size, size), ("gaussian", 0.0, 0.5)), ((1, 1, 1, 8), ("constant", -1.0, 0))):
        dummy.dummy_data_param.shape.add(dim=list(shape))
        added = dummy.dummy_data_param.data_filler.add(type=filler[0])
        if filler[0] == "gaussian":
            added.mean, added.std = filler[1], filler[2]
        else:
            added.value = filler[1]
    copy.layer.extend(layer for layer in net.layer if layer.type != "AnnotatedData")
    for layer in copy.layer:
        if layer.type == "MultiBoxLoss":
            layer.multibox_loss_param.mining_type = caffe_pb2.MultiBoxLossParameter.NONE
    return copy


def solver_template(generated, **overrides) -> str:
    """A solver for one train net, no test net; @NET@, @PREFIX@ and @MAX_ITER@ are filled in at run time."""
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    solver = caffe_pb2.SolverParameter()
    solver.CopyFrom(generated)
    for field in (
        "net",
        "train_net",
        "test_net",
        "test_iter",
        "test_interval",
        "test_initialization",
        "eval_type",
        "ap_version",
        "test_compute_loss",
        "snapshot_prefix",
        "max_iter",
        "device_id",
    ):
        solver.ClearField(field)
    solver.solver_mode = caffe_pb2.SolverParameter.CPU  # `caffe train -gpu 0` switches to the GPU
    for name, value in overrides.items():
        if isinstance(value, list):
            solver.ClearField(name)
            getattr(solver, name).extend(value)
        else:
            setattr(solver, name, value)
    body = text_format.MessageToString(solver)
    return f'train_net: "@NET@"\nsnapshot_prefix: "@PREFIX@"\nmax_iter: @MAX_ITER@\n{body}'


def main(args: argparse.Namespace) -> int:
    from caffe.proto import caffe_pb2
    from google.protobuf import text_format

    sys.path.insert(0, str(BENCH_DIR))
    from caffe_vs_pytorch import layer_summary

    train = text_format.Parse((args.model_dir / "train.prototxt").read_text(), caffe_pb2.NetParameter())
    generated_solver = text_format.Parse((args.model_dir / "solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    args.out.mkdir(parents=True, exist_ok=True)

    def write(name: str, net) -> None:
        (args.out / name).write_text(text_format.MessageToString(net))

    depthwise = []
    for batch in args.batches:
        write(f"train_b{batch}.prototxt", with_batch(train, batch))
        variant, depthwise = without_depthwise_kernels(with_batch(train, batch))
        write(f"train_b{batch}_nodw.prototxt", variant)
    write("train_b24_nodata.prototxt", without_data_layer(train, 24))
    compare = deterministic(train, args.compare_batch)
    write("compare.prototxt", compare)
    write("compare_nodw.prototxt", without_depthwise_kernels(compare)[0])
    kernels = kernel_net()
    write("kernels.prototxt", kernels)
    write("kernels_nodw.prototxt", without_depthwise_kernels(kernels)[0])
    if not depthwise:
        raise SystemExit("error: the train net has no depthwise 3x3 convolution; nothing would test the kernels")
    relu6 = [layer.name for layer in train.layer if layer.type == "ReLU6"]
    if not relu6:
        raise SystemExit("error: the train net has no ReLU6 layer; nothing would test the ReLU6 kernels")

    (args.out / "solver_train.template").write_text(
        solver_template(generated_solver, snapshot=0, snapshot_after_train=False, display=10, average_loss=10)
    )
    (args.out / "solver_compare.template").write_text(
        solver_template(
            generated_solver,
            base_lr=COMPARE_LR,
            lr_policy="fixed",
            momentum=0.0,
            weight_decay=0.0,
            stepvalue=[],
            display=1,
            average_loss=1,
            snapshot=0,
            snapshot_after_train=True,
            debug_info=True,
            random_seed=1,
        )
    )
    (args.out / "solver_init.template").write_text(
        solver_template(generated_solver, display=0, snapshot=0, snapshot_after_train=True, random_seed=1)
    )

    kinds = {layer.name: layer_kind(layer) for layer in kernels.layer}
    (args.out / "kernels_layers.json").write_text(
        json.dumps([{"name": name, "type": kind.split()[0], "kind": kind} for name, kind in kinds.items()], indent=0)
        + "\n"
    )
    layers = []
    for layer in train.layer:
        if layer.type == "AnnotatedData":
            continue  # the PyTorch translation takes "data" as its input
        summary = layer_summary(layer)
        summary["kind"] = layer_kind(layer)
        layers.append(summary)
    (args.out / "layers.json").write_text(json.dumps(layers, indent=0) + "\n")
    print(
        json.dumps(
            {
                "nets": sorted(p.name for p in args.out.iterdir()),
                "depthwise_layers": len(depthwise),
                "relu6_layers": len(relu6),
                "layers": len(train.layer),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(get_args_parser().parse_args()))
