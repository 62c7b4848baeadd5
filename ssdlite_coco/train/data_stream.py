"""Where the data layers of a run stand in their data stream, and the net copies that say so to Caffe.

The project's Caffe (patch 0040) reads an LMDB in a fixed order, wrapping around, and draws every item's
augmentation from a random stream seeded by the layer's seed and the item's position in the data stream.
So the data a run sees after iteration *i* follows from *i* alone: a resumed run whose data layers start
at ``data_param.start_item`` = the items read before its snapshot sees what an uninterrupted run would
have seen. ``data_param.threads`` (the threads that decode and transform a batch) changes nothing in
the batches, only their speed: it is set at run time, outside the run key of the snapshots.
"""

from __future__ import annotations

import os
from pathlib import Path

from ssdlite_coco.caffe_tools.prototxt import format_prototxt, read_net

DATA_LAYER_TYPES = ("AnnotatedData", "Data")


def _phase_of(layer) -> str | None:
    """'TRAIN', 'TEST' or None (both) for a layer's include rules."""
    from caffe.proto import caffe_pb2

    phases = {rule.phase for rule in layer.include if rule.HasField("phase")}
    if len(phases) != 1:
        return None
    return "TRAIN" if phases.pop() == caffe_pb2.TRAIN else "TEST"


def items_per_iteration(net_path: str | os.PathLike, iter_size: int, phase: str = "TRAIN") -> int:
    """Items a net's data layer reads per solver iteration: its batch size times ``iter_size``."""
    net = read_net(net_path)
    sizes = {
        layer.data_param.batch_size
        for layer in net.layer
        if layer.type in DATA_LAYER_TYPES and _phase_of(layer) in (phase, None)
    }
    return max(sizes, default=0) * max(1, iter_size)


def completed_test_passes(iteration: int, test_interval: int, test_initialization: bool) -> int:
    """How many test passes the runner has made before it steps ``iteration`` (it tests at multiples of
    ``test_interval``, at 0 only with ``test_initialization``)."""
    if test_interval <= 0 or iteration <= 0:
        return 0
    passes = (iteration - 1) // test_interval + 1  # multiples of test_interval in [0, iteration)
    return passes if test_initialization else passes - 1


def save_without_runtime_fields(net, out_path: str | os.PathLike) -> None:
    """``net.save`` to ``out_path``, then the data layers' ``threads`` and ``start_item`` cleared in the file:
    the weights a run writes do not depend on its thread count or on where it resumed."""
    from caffe.proto import caffe_pb2

    net.save(str(out_path))
    model = caffe_pb2.NetParameter()
    model.ParseFromString(Path(out_path).read_bytes())
    for layer in model.layer:
        if layer.type in DATA_LAYER_TYPES:
            layer.data_param.ClearField("threads")
            layer.data_param.ClearField("start_item")
    Path(out_path).write_bytes(model.SerializeToString())


def write_runtime_net(
    net_path: str | os.PathLike, out_path: Path, phase: str, data_threads: int, start_item: int
) -> Path:
    """A copy of ``net_path`` whose data layers of ``phase`` ('TRAIN' or 'TEST') use ``data_threads`` threads
    and start at stream position ``start_item``."""
    net = read_net(net_path)
    for layer in net.layer:
        if layer.type in DATA_LAYER_TYPES and _phase_of(layer) in (phase, None):
            layer.data_param.threads = max(1, data_threads)
            layer.data_param.start_item = start_item
    out_path.write_text(format_prototxt(net))
    return out_path
