# Rules of the export stage (see models/README.md): results/export/deploy.{prototxt,caffemodel}, the
# deploy net with BatchNorm/Scale folded into the convolutions, checked against the trained net.


rule export:
    """deploy.prototxt + caffemodel with BatchNorm/Scale folded into the convolutions, checked on test images."""
    input:
        caffe=CAFFE_MANIFEST,
        deploy_net=DEPLOY_NET,
        test_net=TEST_NET,
        weights=TRAINED_WEIGHTS,
        instances=TEST_INSTANCES,
        images=TEST_IMAGES,
    output:
        prototxt="results/export/deploy.prototxt",
        weights="results/export/deploy.caffemodel",
        check="results/export/fold_check.json",
    log:
        "logs/export/export.log",
    conda:
        "../envs/caffe.yaml"
    threads: rule_threads(config, "export")
    params:
        check_images=EVALUATE["fold_check_images"],
        tolerance=EVALUATE["fold_tolerance"],
    shell:
        "logged {log} with-caffe --threads {threads} export.py --deploy-net {input.deploy_net}"
        " --weights {input.weights} --test-net {input.test_net} --instances {input.instances}"
        " --images {input.images} --check-images {params.check_images} --tolerance {params.tolerance}"
        " --out-prototxt {output.prototxt} --out-weights {output.weights}"
        " --check-json {output.check}"
