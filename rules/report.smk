# Rules of the report stage (see README.md): figures for `snakemake --report report.html`.

from ssdlite_coco.common.settings import settings_json
from ssdlite_coco.report.settings import DetectionGridSettings


rule plot_report:
    """Loss curve, mAP table and a grid of detections drawn on test images, for the HTML report."""
    input:
        train_log=TRAIN_LOG_CSV,
        metrics=METRICS_JSON,
        detections=DETECTIONS,
        instances=TEST_INSTANCES,
        images=TEST_IMAGES,
    output:
        loss=report(
            "results/report/loss.png",
            caption="../report/loss.rst",
            category="Training",
        ),
        metrics=report(
            "results/report/metrics.html",
            caption="../report/map.rst",
            category="Evaluation",
        ),
        detections=report(
            "results/report/detections.jpg",
            caption="../report/detections.rst",
            category="Evaluation",
        ),
    log:
        "logs/report/plot_report.log",
    conda:
        "../envs/report.yaml"
    resources:
        **rule_resources(config, "plot_report"),
    params:
        settings=settings_json(DetectionGridSettings, EVALUATE),
    shell:
        "logged {log} plot_report.py --train-log {input.train_log} --metrics {input.metrics}"
        " --detections {input.detections} --instances {input.instances} --images {input.images}"
        " --settings {params.settings:q} --loss-png {output.loss} --metrics-html {output.metrics}"
        " --detections-image {output.detections}"


rule report_export:
    """The export check in every runtime, as a table of the HTML report."""
    input:
        verify=EXPORT_VERIFY,
    output:
        page=report(
            "results/report/export.html",
            caption="../report/export.rst",
            category="Export",
        ),
    log:
        "logs/report/report_export.log",
    conda:
        "../envs/report.yaml"
    resources:
        **rule_resources(config, "report_export"),
    shell:
        "logged {log} export_report.py --verify {input.verify} --export-html {output.page}"


rule report_int8:
    """What INT8 costs per runtime and calibration: table and AP-latency plot of the HTML report."""
    input:
        summary=EXPORT_INT8,
    output:
        page=report(
            "results/report/int8.html",
            caption="../report/int8.rst",
            category="Export",
        ),
        plot=report(
            "results/report/int8.png",
            caption="../report/int8.rst",
            category="Export",
        ),
    log:
        "logs/report/report_int8.log",
    conda:
        "../envs/report.yaml"
    resources:
        **rule_resources(config, "report_int8"),
    shell:
        "logged {log} export_report.py --int8 {input.summary} --int8-html {output.page}"
        " --int8-png {output.plot}"


rule report_model:
    """The priors' coverage of the training boxes per size, as a table of the HTML report."""
    input:
        coverage=f"{MODEL_DIR}/prior_coverage.json",
    output:
        page=report(
            "results/report/prior_coverage.html",
            caption="../report/prior_coverage.rst",
            category="Model",
        ),
    log:
        "logs/report/report_model.log",
    conda:
        "../envs/report.yaml"
    resources:
        **rule_resources(config, "report_model"),
    shell:
        "logged {log} with-caffe model_report.py --coverage {input.coverage} --coverage-html {output.page}"
