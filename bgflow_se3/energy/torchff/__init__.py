"""TorchForceField: an openmm.System compiled into batched torch energy terms (CPU or GPU, float32 or float64)."""
