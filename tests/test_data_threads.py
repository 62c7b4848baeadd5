"""The data layer's item threads (patch 0040): the same batches for any thread count, a stream that can start
anywhere, and a resumed training run that ends with the weights of an uninterrupted one, bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format

from tests.support.pycaffe import require_caffe
from tests.support.tiny_ssd import make_tiny_world, solver_text
from tests.support.train_settings import train_settings

caffe = require_caffe()
from caffe.proto import caffe_pb2  # noqa: E402

from ssdlite_coco.caffe_tools.weights import read_caffemodel  # noqa: E402
from ssdlite_coco.train import runner  # noqa: E402
from ssdlite_coco.train.data_stream import completed_test_passes, items_per_iteration, write_runtime_net  # noqa: E402
from ssdlite_coco.train.runner import TrainRun, train  # noqa: E402
from tests.test_ssd_augmentation import coco_lmdb, data_net, run_batches, upstream_train_data_layer  # noqa: E402

BATCH = 4


@pytest.fixture(scope="module")
def augmented_net(tmp_path_factory, coco_mini_dir, shared_dir) -> Path:
    """One AnnotatedData layer with the upstream SSDLite train augmentation (distortion, expansion, 6 batch
    samplers, 5 random interpolations, mirror) over 12 real coco-mini images."""
    folder = tmp_path_factory.mktemp("threads")
    source, _, _ = coco_lmdb(coco_mini_dir, folder, 12)
    layer = upstream_train_data_layer(shared_dir / "reference" / "upstream")
    return data_net(folder / "net.prototxt", source, layer.transform_param, BATCH, layer.annotated_data_param)


def with_data_param(net_path: Path, out: Path, **fields) -> Path:
    net = text_format.Parse(net_path.read_text(), caffe_pb2.NetParameter())
    for name, value in fields.items():
        setattr(net.layer[0].data_param, name, value)
    out.write_text(text_format.MessageToString(net))
    return out


def assert_same_batches(first, second) -> None:
    for (data_a, label_a), (data_b, label_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(data_a, data_b)
        np.testing.assert_array_equal(label_a, label_b)


def test_batches_are_bit_identical_for_any_thread_count(augmented_net, tmp_path):
    one = run_batches(with_data_param(augmented_net, tmp_path / "t1.prototxt", threads=1), 5, seed=7)
    for threads in (2, 3, 4):
        many = run_batches(with_data_param(augmented_net, tmp_path / f"t{threads}.prototxt", threads=threads), 5, 7)
        assert_same_batches(one, many)
    # the augmentation is random: another seed gives other batches, so equal batches above are not a constant
    other = run_batches(with_data_param(augmented_net, tmp_path / "t2.prototxt", threads=2), 5, seed=8)
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(one, other, strict=True))


def test_a_stream_started_at_an_item_gives_the_batches_an_uninterrupted_stream_gives_there(augmented_net, tmp_path):
    uninterrupted = run_batches(with_data_param(augmented_net, tmp_path / "0.prototxt", threads=2), 5, seed=7)
    # batches of 4: a stream started at item 8 gives the third batch on
    started = run_batches(with_data_param(augmented_net, tmp_path / "8.prototxt", threads=2, start_item=8), 3, 7)
    assert_same_batches(uninterrupted[2:], started)
    # 12 records: item 12 reads record 0 like item 0, but the position, not the record, seeds the augmentation
    wrapped = run_batches(with_data_param(augmented_net, tmp_path / "12.prototxt", start_item=12), 1, seed=7)
    assert not np.array_equal(wrapped[0][0], uninterrupted[0][0])
    assert_same_batches(uninterrupted[3:4], wrapped)


def test_the_plain_data_layer_gives_the_same_batches_for_any_thread_count(tmp_path):
    """Data (Datum records) shares the pattern: random crops and mirrors, the same for 1 and 3 threads."""
    import lmdb

    rng = np.random.default_rng(0)
    env = lmdb.open(str(tmp_path / "lmdb"), map_size=1 << 26)
    with env.begin(write=True) as txn:
        for index in range(10):
            datum = caffe_pb2.Datum(channels=3, height=20, width=24, label=index)
            datum.data = rng.integers(0, 256, (3, 20, 24), dtype=np.uint8).tobytes()
            txn.put(f"{index:04d}".encode(), datum.SerializeToString())
    env.close()

    def batches(threads: int, seed: int):
        net = tmp_path / f"data_{threads}.prototxt"
        net.write_text(
            'layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }\n'
            "  transform_param { mirror: true crop_size: 16 }\n"
            f'  data_param {{ source: "{tmp_path / "lmdb"}" batch_size: 4 backend: LMDB threads: {threads} }} }}\n'
        )
        caffe.set_random_seed(seed)
        loaded = caffe.Net(str(net), caffe.TRAIN)
        out = []
        for _ in range(4):
            loaded.forward()
            out.append((loaded.blobs["data"].data.copy(), loaded.blobs["label"].data.copy()))
        del loaded
        return out

    one = batches(1, 3)
    assert_same_batches(one, batches(3, 3))
    assert [int(label) for _, labels in one for label in labels][:10] == list(range(10))
    assert any(not np.array_equal(a[0], b[0]) for a, b in zip(one, batches(1, 4), strict=True))


def test_stream_positions_follow_from_the_iteration(tmp_path):
    assert completed_test_passes(0, 10, False) == 0 and completed_test_passes(10, 10, False) == 0
    assert completed_test_passes(11, 10, False) == 1 and completed_test_passes(30, 10, False) == 2
    assert completed_test_passes(10, 10, True) == 1 and completed_test_passes(11, 10, True) == 2
    assert completed_test_passes(500, 0, True) == 0
    net = tmp_path / "net.prototxt"
    net.write_text(
        'layer { name: "a" type: "AnnotatedData" top: "data" include { phase: TRAIN } data_param { batch_size: 6 } }\n'
        'layer { name: "b" type: "AnnotatedData" top: "data" include { phase: TEST } data_param { batch_size: 2 } }\n'
    )
    assert items_per_iteration(net, iter_size=3) == 18 and items_per_iteration(net, 1, "TEST") == 2
    copy = text_format.Parse(
        write_runtime_net(net, tmp_path / "copy.prototxt", "TEST", 3, 40).read_text(), caffe_pb2.NetParameter()
    )
    assert [(layer.data_param.threads, layer.data_param.start_item) for layer in copy.layer] == [(1, 0), (3, 40)]


# ------------------------------------------------------------------------------------------------- exact resume
@pytest.fixture(scope="module")
def world(tmp_path_factory, coco_mini_dir):
    return make_tiny_world(tmp_path_factory.mktemp("resume"), coco_mini_dir)


def train_to(world, folder: Path, max_iter: int, data_threads: int) -> dict[str, list[np.ndarray]]:
    """Train the tiny SSD (mirror and random crops on) to ``max_iter`` in ``folder``, resuming from its snapshots;
    the weights as written."""
    solver = folder / "solver.prototxt"
    solver.parent.mkdir(parents=True, exist_ok=True)
    # tests every 4 iterations on 2 of the 3 test batches: the test net's position matters on resume too
    solver.write_text(solver_text(world.train_net, world.test_net, folder / "unused", max_iter, 2, 4))
    run = TrainRun(
        solver=solver,
        weights_out=folder / f"final_{max_iter}.caffemodel",
        log_csv_out=folder / "train_log.csv",
        snapshot_root=folder / "snapshots",
        settings=train_settings(snapshot_interval=5, data_threads=data_threads),
        threads=1,
    )
    train(run, log=lambda message: None)
    return read_caffemodel(run.weights_out)


def assert_same_weights(a: dict[str, list[np.ndarray]], b: dict[str, list[np.ndarray]]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        for blob_a, blob_b in zip(a[name], b[name], strict=True):
            np.testing.assert_array_equal(blob_a, blob_b, err_msg=name)


@pytest.mark.parametrize("data_threads", [1, 2])
def test_a_run_resumed_after_its_snapshot_ends_with_the_uninterrupted_weights(world, tmp_path, data_threads):
    uninterrupted = train_to(world, tmp_path / "straight", 12, data_threads)
    # ends with its snapshot at 5, as if killed there: the reader at item 20 of 24 records, one test pass done
    train_to(world, tmp_path / "stopped", 5, data_threads)
    resumed = train_to(world, tmp_path / "stopped", 12, data_threads)
    assert_same_weights(uninterrupted, resumed)


def test_the_comparison_fails_when_the_resumed_reader_starts_at_record_0(world, tmp_path, monkeypatch):
    uninterrupted = train_to(world, tmp_path / "straight", 12, 2)
    train_to(world, tmp_path / "stopped", 5, 2)
    monkeypatch.setattr(runner, "items_per_iteration", lambda *args, **kwargs: 0)
    restarted_reader = train_to(world, tmp_path / "stopped", 12, 2)
    with pytest.raises(AssertionError):
        assert_same_weights(uninterrupted, restarted_reader)
