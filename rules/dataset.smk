# Rules of the dataset stage (see README.md).
