# Rules of the labelmap stage (see README.md): results/labelmap/labelmap.prototxt (config labelmap.mode,
# or the checked labelmap.file) and results/labelmap/{split}_name_size.txt for trainval and test.


rule make_labelmap:
    """Write the Caffe-SSD labelmap of the dataset and the name-size file (image_id height width) per split."""
    input:
        trainval="results/data/trainval/instances.json",
        test="results/data/test/instances.json",
        user_labelmap=user_labelmap_inputs,
        caffe="resources/caffe/manifest.json",
    output:
        labelmap="results/labelmap/labelmap.prototxt",
        trainval_name_size="results/labelmap/trainval_name_size.txt",
        test_name_size="results/labelmap/test_name_size.txt",
    log:
        "logs/labelmap/make_labelmap.log",
    conda:
        "../envs/caffe.yaml"
    params:
        mode=LABELMAP["mode"],
        user_labelmap=LABELMAP["file"],
    shell:
        "with-caffe make_labelmap.py --trainval {input.trainval} --test {input.test}"
        " --mode {params.mode} --labelmap-file={params.user_labelmap:q} --labelmap-out {output.labelmap}"
        " --trainval-name-size-out {output.trainval_name_size}"
        " --test-name-size-out {output.test_name_size} > {log} 2>&1"
