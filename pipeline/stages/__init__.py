"""The pipeline's stages, one module each: prepare, tune, train, evaluate, register."""
