"""Reference ImageNet MobileNetV2s with random weights, for the weight conversion tests.

``torchvision_mobilenet_v2(width)``: torchvision's ``mobilenet_v2`` rebuilt in plain torch (torchvision
itself does not import beside this torch), module for module, so that its state dict has torchvision's
exact keys (``features.0.0.weight`` ... ``features.18.1.*``, ``classifier.1.*``). Weights are random and
the BatchNorm statistics are random too: measured on random images, then perturbed.

Images are coco-mini JPEGs resized to a square, as uint8 pixels (H, W, 3) in RGB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# torchvision's table: (expansion t, channels c, repeats n, first stride s)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
TV_MEAN = (0.485, 0.456, 0.406)
TV_STD = (0.229, 0.224, 0.225)
SHICAI_MEAN = (103.94, 116.78, 123.68)
SHICAI_SCALE = 0.017


def _divisible(value: float, divisor: int = 8) -> int:
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def torchvision_mobilenet_v2(width: float = 1.0, seed: int = 0):
    import torch
    from torch import nn

    def conv_norm_act(inp, out, kernel, stride=1, groups=1):  # torchvision's Conv2dNormActivation
        conv = nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out), nn.ReLU6(inplace=True))

    class InvertedResidual(nn.Module):
        def __init__(self, inp, out, stride, expansion):
            super().__init__()
            hidden = int(round(inp * expansion))
            self.use_res_connect = stride == 1 and inp == out
            layers = [] if expansion == 1 else [conv_norm_act(inp, hidden, 1)]
            layers += [conv_norm_act(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, out, 1, bias=False)]
            self.conv = nn.Sequential(*layers, nn.BatchNorm2d(out))

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    torch.manual_seed(seed)
    channels = _divisible(32 * width)
    last = _divisible(1280 * max(1.0, width))
    features = [conv_norm_act(3, channels, 3, 2)]
    for t, c, n, s in SETTINGS:
        for i in range(n):
            features.append(InvertedResidual(channels, _divisible(c * width), s if i == 0 else 1, t))
            channels = _divisible(c * width)
    features.append(conv_norm_act(channels, last, 1))
    model = nn.Module()
    model.features = nn.Sequential(*features)
    model.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, 1000))
    model.forward = lambda x: model.classifier(model.features(x).mean((2, 3)))
    _random_statistics(model, seed)
    return model.eval()


def _random_statistics(model, seed: int) -> None:
    """BatchNorm statistics measured on random inputs, then perturbed; random gamma and beta."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = None  # cumulative average over the batches below
    model.train()
    with torch.no_grad():
        model.features(torch.randn(4, 3, 96, 96, generator=generator))
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                size = module.num_features
                std = module.running_var.sqrt()
                module.running_mean += 0.1 * std * torch.randn(size, generator=generator)
                module.running_var *= torch.exp(0.4 * torch.rand(size, generator=generator) - 0.2)
                module.weight.copy_(0.5 + torch.rand(size, generator=generator))
                module.bias.copy_(0.2 * torch.randn(size, generator=generator))
    model.eval()


def torch_features(model, pixels_rgb: np.ndarray, pad_with_grey: bool = False) -> dict[str, np.ndarray]:
    """Feature maps of the torch model: stem (features.0), block 13's expansion (features.14.conv.0), Conv_1.

    ``pad_with_grey``: the stem's padding is a ring of pixel value 127.5 (what the converted net's zero
    padding is) instead of the normalised zero, to check everything except the border exactly.
    """
    import torch

    pixels = pixels_rgb.astype(np.float32)
    if pad_with_grey:
        pixels = np.pad(pixels, ((1, 1), (1, 1), (0, 0)), constant_values=127.5)
    x = (pixels / 255 - np.array(TV_MEAN, np.float32)) / np.array(TV_STD, np.float32)
    # in float64: the reference is the exact function, what remains is Caffe's float32 rounding
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)[None])).double()
    captured = {}
    hooks = [
        model.features[0].register_forward_hook(lambda m, i, o: captured.__setitem__("Conv", o.clone())),
        model.features[14]
        .conv[0]
        .register_forward_hook(lambda m, i, o: captured.__setitem__("conv_13/expand", o.clone())),
        model.features[18].register_forward_hook(lambda m, i, o: captured.__setitem__("Conv_1", o.clone())),
    ]
    stem = model.features[0][0]
    stem.padding = (0, 0) if pad_with_grey else (1, 1)
    model.double()
    try:
        with torch.no_grad():
            model.features(x)
    finally:
        stem.padding = (1, 1)
        model.float()
        for hook in hooks:
            hook.remove()
    return {name: value.numpy()[0] for name, value in captured.items()}


def coco_pixels(coco_mini_dir: Path, size: int, count: int = 2) -> list[np.ndarray]:
    from PIL import Image

    files = sorted((coco_mini_dir / "images").glob("*.jpg"))[:count]
    return [np.asarray(Image.open(f).convert("RGB").resize((size, size), Image.BILINEAR)) for f in files]


def net_input(pixels_rgb: np.ndarray) -> np.ndarray:
    """The generated nets' input: BGR, (pixel - 127.5) * 0.007843, NCHW."""
    bgr = pixels_rgb[..., ::-1].astype(np.float32)
    return ((bgr - 127.5) * 0.007843).transpose(2, 0, 1)[None]


def shicai_input(pixels_rgb: np.ndarray, pad_with_grey: bool = False) -> np.ndarray:
    bgr = pixels_rgb[..., ::-1].astype(np.float32)
    if pad_with_grey:
        bgr = np.pad(bgr, ((1, 1), (1, 1), (0, 0)), constant_values=127.5)
    return ((bgr - np.array(SHICAI_MEAN, np.float32)) * SHICAI_SCALE).transpose(2, 0, 1)[None]


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    """max |value - reference| / max |reference|."""
    return float(np.abs(value - reference).max() / np.abs(reference).max())


def calibrated_mobilenet_v2(coco_mini_dir: Path, width: float = 1.0, seed: int = 0, size: int = 160):
    """Random weights whose BatchNorm statistics are measured on real images, as a trained net's are.

    The perturbed statistics of ``torchvision_mobilenet_v2`` make a net that amplifies any rounding by
    orders of magnitude (what the conversion tests want); a whole chain wants a net as well-conditioned
    as real ImageNet weights.
    """
    import torch

    model = torchvision_mobilenet_v2(width=width, seed=seed)
    pixels = np.stack(coco_pixels(coco_mini_dir, size, count=16)).astype(np.float32)
    x = (pixels / 255 - np.array(TV_MEAN, np.float32)) / np.array(TV_STD, np.float32)
    batch = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    with torch.no_grad():
        model.features(batch)
    return model.eval()
