"""Stage lmdb (rules/lmdb.smk): Caffe LMDBs of AnnotatedDatum records per split, and their check."""
