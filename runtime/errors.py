"""What ``runtime`` raises for what a caller can fix (each message one line naming the fix), the install hints
those messages give, and the one GPU check that needs no GPU library to import."""
from __future__ import annotations

from ernie_common.errors import UserError

GPU_EXTRA = "pip install 'ernie-tiny-compressor[gpu]' (onnxruntime-gpu, instead of onnxruntime) on a CUDA machine"
TENSORRT_EXTRA = "pip install 'ernie-tiny-compressor[tensorrt]' on a machine with an NVIDIA GPU"


class BackendUnavailable(UserError, RuntimeError):
    """This machine cannot run the requested back end; the message says what to install or change."""


class ModelDirError(UserError):
    """The directory cannot be served as a classifier; the message names the fix."""


def gpu_available() -> bool:
    """True when torch sees a CUDA device."""
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()
