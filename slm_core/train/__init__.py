"""Training: the loop, its modes, optimizers, distillation, monitoring and pre-flight checks."""
