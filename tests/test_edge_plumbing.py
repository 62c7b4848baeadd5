"""The edge toolchains' plumbing without a toolchain: the runtime table and the schema name the same runtimes,
the worker's wire format carries arrays exactly, a toolchain's venv is found, refused or made as documented."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest

from ssdlite_coco.common.config import SCHEMA_PATH, schema_default, validate_config
from ssdlite_coco.export.edge import environment
from ssdlite_coco.export.edge.pipe import PipeClosed, receive, send
from ssdlite_coco.export.runtime_check import RUNTIMES


def test_the_schema_names_every_runtime_of_the_table_and_no_other():
    schema = validate_config({}, SCHEMA_PATH)
    assert schema["export"]["runtimes"] == ["pycaffe", "opencv", "mnn", "onnxruntime"]
    import yaml

    enum = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["export"]["properties"]["runtimes"]["items"]["enum"]
    assert sorted(enum) == sorted(RUNTIMES)
    assert set(environment.TOOLCHAINS) == set(RUNTIMES) - set(schema_default("export.runtimes"))
    for name in environment.TOOLCHAINS:
        assert environment.requirements_file(name).is_file(), name


def test_an_unknown_runtime_is_refused_by_the_schema():
    with pytest.raises(Exception, match="tensorrt"):
        validate_config({"export": {"runtimes": ["tensorrt"]}}, SCHEMA_PATH)


def test_the_wire_format_carries_arrays_bit_for_bit():
    stream = io.BytesIO()
    loc = np.random.default_rng(1).normal(size=(1917, 4)).astype(np.float32)
    scores = np.random.default_rng(2).random((1, 1917, 81), dtype=np.float32)
    send(stream, {"op": "infer", "note": "x"}, (loc, scores))
    send(stream, {"op": "quit"})
    stream.seek(0)
    message, arrays = receive(stream)
    assert message == {"op": "infer", "note": "x"}
    assert [a.shape for a in arrays] == [loc.shape, scores.shape]
    assert np.array_equal(arrays[0], loc) and np.array_equal(arrays[1], scores)
    assert receive(stream) == ({"op": "quit"}, [])
    with pytest.raises(PipeClosed):
        receive(stream)


def test_a_truncated_message_is_a_closed_pipe_not_a_short_array():
    stream = io.BytesIO()
    send(stream, {"op": "infer"}, (np.zeros((10, 4), np.float32),))
    cut = io.BytesIO(stream.getvalue()[:-8])
    with pytest.raises(PipeClosed, match="152 of 160 bytes"):
        receive(cut)


def test_an_unknown_toolchain_names_the_choices():
    with pytest.raises(environment.ToolchainEnvError, match="rknn, openvino, ncnn, litert"):
        environment.toolchain_python("tensorrt")


def test_a_python_named_by_the_user_is_used_as_it_is(monkeypatch, tmp_path):
    monkeypatch.setenv("SSDLITE_OPENVINO_PYTHON", sys.executable)
    monkeypatch.setenv("SSDLITE_TOOLCHAIN_CACHE", str(tmp_path))
    assert str(environment.toolchain_python("openvino")) == sys.executable
    assert list(tmp_path.iterdir()) == []


def test_a_failed_install_leaves_no_venv_that_looks_finished(monkeypatch, tmp_path):
    """A pin that cannot install: one line naming the toolchain and the log; no marker; the next try starts over."""
    requirements = tmp_path / "reqs"
    requirements.mkdir()
    (requirements / "ncnn.txt").write_text("--no-index\nno-such-package-ssdlite==1.0\n")
    monkeypatch.setattr(environment, "REQUIREMENTS_DIR", requirements)
    monkeypatch.setenv("SSDLITE_TOOLCHAIN_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("SSDLITE_NCNN_PYTHON", raising=False)
    with pytest.raises(environment.ToolchainEnvError, match=r"installing the ncnn toolchain .* failed .*\.log"):
        environment.toolchain_python("ncnn", log=lambda message: None)
    leftovers = sorted(path.name for path in (tmp_path / "cache").iterdir())
    assert [name for name in leftovers if not name.endswith((".lock", ".log"))] == [], leftovers


def test_the_worker_reports_a_toolchain_it_cannot_import_as_its_error(tmp_path):
    """The worker's first answer is the error, sent on the pipe (the check reports it in the row)."""
    command = [sys.executable, "-m", "ssdlite_coco.export.edge.worker", "--toolchain", "nosuch"]
    command += ["--export-dir", str(tmp_path), "--work-dir", str(tmp_path / "work")]
    result = subprocess.run(command, input=b"", capture_output=True, check=False)
    message, _ = receive(io.BytesIO(result.stdout))
    assert result.returncode == 1
    assert message["op"] == "error" and "ssdlite_coco.export.edge.nosuch" in message["error"]
