# Rules of the evaluate stage (see README.md): score the trained weights on the test split (COCO metrics
# with pycocotools + Caffe's detection_eval).

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.evaluate.settings import EvaluateSettings


rule evaluate:
    """The trained net on the test split: COCO detections, the 12 COCO numbers, per-class AP, detection_eval."""
    input:
        **TEST_SPLIT_INPUTS,
        weights=TRAINED_WEIGHTS,
    output:
        metrics_json=report(
            METRICS_JSON,
            caption="../report/metrics.rst",
            category="Evaluation",
        ),
        metrics_csv="results/evaluate/metrics.csv",
        per_class_csv="results/evaluate/per_class_ap.csv",
        detections=DETECTIONS,
    log:
        "logs/evaluate/evaluate.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "evaluate")
    resources:
        **caffe_rule_resources("evaluate"),
    params:
        device=TRAIN["device"],
        settings=settings_json(EvaluateSettings, EVALUATE),
    shell:
        "logged {log} with-caffe --threads {threads} evaluate.py --weights {input.weights}"
        " --device {params.device} --settings {params.settings:q} --data-threads {threads}"
        + TEST_SPLIT_FLAGS
        + (
            " --metrics-json {output.metrics_json} --metrics-csv {output.metrics_csv}"
            " --per-class-csv {output.per_class_csv} --detections {output.detections}"
        )
