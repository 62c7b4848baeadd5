"""The edge toolchains of the export check (RKNN, OpenVINO, ncnn, LiteRT), each in its own venv.

``environment`` makes and caches a toolchain's venv from its pinned requirements; ``worker`` runs in that
venv, converts the export with one toolchain module (``rknn``, ``openvino``, ``ncnn``, ``litert``) and serves
inferences to ``export.runtimes.ToolchainRuntime`` over a pipe. Nothing here imports pycaffe or Snakemake.
"""
