"""Stage model (rules/model.smk): MobileNetV2-SSDLite train/test/deploy nets and the solver, generated or patched."""
