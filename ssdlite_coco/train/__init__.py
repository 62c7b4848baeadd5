"""Stage train (rules/train.smk): initial weights, training through pycaffe with resumable snapshots, the training log.

"""
