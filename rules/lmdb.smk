# Rules of the lmdb stage (see README.md).
