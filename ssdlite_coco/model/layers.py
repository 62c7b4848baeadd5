"""Append Caffe layers to a ``caffe_pb2.NetParameter``: the small vocabulary the SSDLite generator speaks.

``NetWriter`` keeps the spatial size of every blob it writes, so that stride-2 convolutions can emulate
TensorFlow's "SAME" padding (``padding="tf"``: pad 2 and slice off the first row and column when the input
size is even) and so that the generator can report feature-map sizes without instantiating the net.
"""

from __future__ import annotations

from caffe.proto import caffe_pb2

ACTIVATIONS = {"relu6": "ReLU6", "relu": "ReLU"}
BN_MODES = ("explicit", "folded")
PADDINGS = ("caffe", "tf")


def conv_output_size(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class NetWriter:
    """Writes layers into ``net``; every method returns the name of the blob it produced."""

    def __init__(
        self,
        net: caffe_pb2.NetParameter,
        activation: str,
        padding: str,
        bn_moving_average_fraction: float,
        bn_eps: float,
    ):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation {activation!r} is not one of {sorted(ACTIVATIONS)}")
        if padding not in PADDINGS:
            raise ValueError(f"padding {padding!r} is not one of {list(PADDINGS)}")
        self.net = net
        self.activation_type = ACTIVATIONS[activation]
        self.padding = padding
        self.bn_moving_average_fraction = bn_moving_average_fraction
        self.bn_eps = bn_eps
        self.sizes: dict[str, int] = {}
        self.unused_tops: list[str] = []

    # -- generic --------------------------------------------------------------------------------------
    def layer(self, name: str, type_: str, bottoms: list[str], tops: list[str]) -> caffe_pb2.LayerParameter:
        layer = self.net.layer.add(name=name, type=type_)
        layer.bottom.extend(bottoms)
        layer.top.extend(tops)
        return layer

    @staticmethod
    def add_param(layer: caffe_pb2.LayerParameter, lr_mult: float, decay_mult: float) -> None:
        layer.param.add(lr_mult=lr_mult, decay_mult=decay_mult)

    # -- convolutions -------------------------------------------------------------------------------
    def conv(
        self,
        name: str,
        bottom: str,
        num_output: int,
        kernel: int = 1,
        stride: int = 1,
        group: int = 1,
        bias: bool = True,
    ) -> str:
        """A convolution; grouped ones run on Caffe's own engine (cuDNN's grouped path is slow, fragile)."""
        size = self.sizes.get(bottom)
        pad = (kernel - 1) // 2
        slice_margins = False
        if self.padding == "tf" and stride == 2 and kernel == 3 and size is not None and size % 2 == 0:
            # TensorFlow pads an even input only at the bottom and right: pad 2 and drop the first row/column.
            pad, slice_margins = 2, True
        top = f"{name}/pad" if slice_margins else name
        layer = self.layer(name, "Convolution", [bottom], [top])
        self.add_param(layer, 1.0, 1.0)
        if bias:
            self.add_param(layer, 2.0, 0.0)
        param = layer.convolution_param
        param.num_output = num_output
        param.bias_term = bias
        if pad:
            param.pad.append(pad)
        param.kernel_size.append(kernel)
        if stride != 1:
            param.stride.append(stride)
        if group != 1:
            param.group = group
            param.engine = caffe_pb2.ConvolutionParameter.CAFFE
        param.weight_filler.type = "msra"
        if bias:
            param.bias_filler.type = "constant"
            param.bias_filler.value = 0.0
        if size is not None:
            self.sizes[top] = conv_output_size(size, kernel, stride, pad)
        if slice_margins:
            self._slice_first(top, f"{name}/margin_h", f"{name}/tmp", axis=2, layer_name=f"{name}/slice_h")
            self._slice_first(f"{name}/tmp", f"{name}/margin_w", name, axis=3, layer_name=f"{name}/slice_w")
            if size is not None:
                self.sizes[name] = self.sizes[top] - 1
        return name

    def _slice_first(self, bottom: str, margin: str, rest: str, axis: int, layer_name: str) -> None:
        layer = self.layer(layer_name, "Slice", [bottom], [margin, rest])
        layer.slice_param.axis = axis
        layer.slice_param.slice_point.append(1)
        self.unused_tops.append(margin)

    def batch_norm(self, name: str, blob: str) -> str:
        """BatchNorm (running statistics, never learned) + Scale (learned gamma and beta), in place."""
        bn = self.layer(f"{name}/bn", "BatchNorm", [blob], [blob])
        bn.batch_norm_param.eps = self.bn_eps
        if self.bn_moving_average_fraction != 0.999:  # Caffe's default, left implicit
            bn.batch_norm_param.moving_average_fraction = self.bn_moving_average_fraction
        for _ in range(3):
            self.add_param(bn, 0.0, 0.0)
        scale = self.layer(f"{name}/scale", "Scale", [blob], [blob])
        self.add_param(scale, 1.0, 0.0)
        self.add_param(scale, 2.0, 0.0)
        scale.scale_param.bias_term = True
        scale.scale_param.filler.value = 1.0
        scale.scale_param.bias_filler.value = 0.0
        return blob

    def activation(self, name: str, blob: str) -> str:
        self.layer(f"{name}/relu", self.activation_type, [blob], [blob])
        return blob

    def conv_unit(
        self,
        name: str,
        bottom: str,
        num_output: int,
        kernel: int = 1,
        stride: int = 1,
        group: int = 1,
        *,
        bn: str,
        act: bool = True,
    ) -> str:
        """Convolution, BatchNorm + Scale (``bn="explicit"``) or a bias (``bn="folded"``), activation."""
        if bn not in BN_MODES:
            raise ValueError(f"batch norm mode {bn!r} is not one of {list(BN_MODES)}")
        top = self.conv(name, bottom, num_output, kernel, stride, group, bias=bn == "folded")
        if bn == "explicit":
            self.batch_norm(name, top)
        if act:
            self.activation(name, top)
        return top

    # -- plumbing ----------------------------------------------------------------------------------
    def eltwise_sum(self, name: str, bottoms: list[str]) -> str:
        self.layer(name, "Eltwise", bottoms, [name])
        self.sizes[name] = self.sizes.get(bottoms[0])
        return name

    def permute_flatten(self, blob: str) -> str:
        perm = self.layer(f"{blob}_perm", "Permute", [blob], [f"{blob}_perm"])
        perm.permute_param.order.extend([0, 2, 3, 1])
        flat = self.layer(f"{blob}_flat", "Flatten", [f"{blob}_perm"], [f"{blob}_flat"])
        flat.flatten_param.axis = 1
        return f"{blob}_flat"

    def concat(self, name: str, bottoms: list[str], axis: int) -> str:
        layer = self.layer(name, "Concat", bottoms, [name])
        layer.concat_param.axis = axis
        return name

    def silence_unused(self) -> None:
        """Consume the slice margins, so that they are not mistaken for outputs of the net."""
        if self.unused_tops:
            self.layer("silence", "Silence", list(self.unused_tops), [])
