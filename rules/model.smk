# Rules of the model stage (see README.md).
