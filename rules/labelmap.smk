# Rules of the labelmap stage (see README.md).
