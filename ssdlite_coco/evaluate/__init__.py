"""Stage evaluate (rules/evaluate.smk): the test net over the test split, Caffe's detection_eval, COCO metrics."""
