"""Training: the loop, its modes, optimizers, distillation, monitoring and pre-flight checks.

`from slm_core.train import train` is the documented entry point (slm_core.train.loop.train)."""


def __getattr__(name: str):
    # Resolved on first use, so the Studio's server can import torch-free train modules (distributed, queue
    # arguments) without the package pulling in the loop and torch.
    if name == "train":
        from slm_core.train.loop import train

        return train
    raise AttributeError(f"module 'slm_core.train' has no attribute {name!r}")
