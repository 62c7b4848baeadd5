# Rules of the export stage (see models/README.md, "Deploying"): results/export/ holds the deploy net
# with BatchNorm folded and runtime-safe rewrites (caffe/), the head-only net with its priors (caffe-heads/),
# both with ReLU6 as BVLC Caffe's Clip (caffe-clip/), its ONNX form (onnx/), the preprocessing, calibration
# images, and the check in every runtime of export.runtimes (verify.json); the edge toolchains among them
# (RKNN, OpenVINO, ncnn, LiteRT) run in their own venvs and leave their converted models in edge/<name>/.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.export.settings import ExportSettings, Int8Settings


rule export:
    """Caffe, head-only Caffe and ONNX exports, checked in every runtime of export.runtimes."""
    input:
        caffe=CAFFE_MANIFEST,
        deploy_net=DEPLOY_NET,
        test_net=TEST_NET,
        weights=TRAINED_WEIGHTS,
        instances=TEST_INSTANCES,
        images=TEST_IMAGES,
        labelmap=LABELMAP_FILE,
        calibration_instances=SPLIT_INSTANCES.format(split="trainval"),
        calibration_images=SPLIT_IMAGES.format(split="trainval"),
    output:
        prototxt=f"{EXPORT_DIR}/caffe/deploy.prototxt",
        weights=EXPORT_WEIGHTS,
        heads_prototxt=f"{EXPORT_DIR}/caffe-heads/heads.prototxt",
        heads_weights=f"{EXPORT_DIR}/caffe-heads/heads.caffemodel",
        priors=f"{EXPORT_DIR}/caffe-heads/priors.npy",
        decode=f"{EXPORT_DIR}/caffe-heads/decode.json",
        clip_prototxt=f"{EXPORT_DIR}/caffe-clip/deploy.prototxt",
        clip_weights=f"{EXPORT_DIR}/caffe-clip/deploy.caffemodel",
        clip_heads_prototxt=f"{EXPORT_DIR}/caffe-clip/heads.prototxt",
        clip_heads_weights=f"{EXPORT_DIR}/caffe-clip/heads.caffemodel",
        onnx=f"{EXPORT_DIR}/onnx/heads.onnx",
        preprocess=f"{EXPORT_DIR}/preprocess.json",
        calibration=directory(f"{EXPORT_DIR}/calibration"),
        fold_check=f"{EXPORT_DIR}/fold_check.json",
        verify=EXPORT_VERIFY,
        verify_table=f"{EXPORT_DIR}/verify.md",
        edge=[directory(path) for path in EDGE_DIRS],
    log:
        "logs/export/export.log",
    conda:
        "../envs/export.yaml"
    threads: rule_threads(config, "export")
    resources:
        **rule_resources(config, "export"),
    params:
        out_dir=export_out_dir,
        settings=settings_json(ExportSettings, EXPORT),
    shell:
        "logged {log} with-caffe --threads {threads} export.py --deploy-net {input.deploy_net}"
        " --weights {input.weights} --test-net {input.test_net} --instances {input.instances}"
        " --images {input.images} --labelmap {input.labelmap} --out-dir {params.out_dir}"
        " --settings {params.settings:q}"
        " --calibration-instances {input.calibration_instances}"
        " --calibration-images-dir {input.calibration_images}"
        " --threads {threads}"


rule export_int8:
    """INT8 models of the head-only export (ONNX Runtime QDQ, MNN, RKNN), evaluated like the FP32 export."""
    input:
        caffe=CAFFE_MANIFEST,
        verify=rules.export.output.verify,
        onnx=rules.export.output.onnx,
        heads_prototxt=rules.export.output.heads_prototxt,
        heads_weights=rules.export.output.heads_weights,
        priors=rules.export.output.priors,
        decode=rules.export.output.decode,
        calibration=rules.export.output.calibration,
        deploy_net=DEPLOY_NET,
        test_net=TEST_NET,
        instances=TEST_INSTANCES,
        images=TEST_IMAGES,
        labelmap=LABELMAP_FILE,
    output:
        summary=EXPORT_INT8,
        table=f"{EXPORT_INT8_DIR}/int8.md",
        models=directory(f"{EXPORT_INT8_DIR}/models"),
    log:
        "logs/export/export_int8.log",
    conda:
        "../envs/export.yaml"
    threads: rule_threads(config, "export_int8")
    resources:
        **rule_resources(config, "export_int8"),
    params:
        export_dir=export_dir_of,
        out_dir=int8_out_dir,
        settings=settings_json(Int8Settings, EXPORT),
    shell:
        "logged {log} with-caffe --threads {threads} export_int8.py --export-dir {params.export_dir}"
        " --deploy-net {input.deploy_net} --test-net {input.test_net} --instances {input.instances}"
        " --images {input.images} --labelmap {input.labelmap} --out-dir {params.out_dir}"
        " --settings {params.settings:q} --threads {threads}"
