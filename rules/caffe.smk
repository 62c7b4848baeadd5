# Rules of the Caffe-SSD build (see caffe/README.md): the project's patched Caffe in the shared build
# cache, recorded in resources/caffe/manifest.json.


rule caffe_build:
    """Build the project's Caffe-SSD (pinned sdist + caffe/patches) into the shared build cache."""
    input:
        source=workflow_file("caffe", "source.json"),
        patches=sorted(glob.glob(workflow_file("caffe", "patches", "*.patch"))),
    output:
        manifest=CAFFE_MANIFEST,
    log:
        "logs/caffe/caffe_build.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "caffe_build")
    resources:
        **rule_resources(config, "caffe_build"),
    params:
        device=config["caffe"]["device"],
    shell:
        "logged {log} build_caffe.py --device {params.device} --jobs {threads}"
        " --manifest-out {output.manifest}"
