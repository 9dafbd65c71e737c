"""Ways of running the net, behind one interface.

Every backend offers these calls on torch tensors (float32, the backend's device):

``full(raw)``            B x 1 x H x W amplified mosaic -> B x H x W x 3 RGB in the net's output space
                         (channels last)
``head(raw)``            tiled inference's per-tile start of the 1/32 branch (:meth:`lowlux.model.LowLightNet.head`)
``context(head)``        its whole-frame part (:meth:`lowlux.model.LowLightNet.context`)
``local(raw, context)``  its per-tile rest (:meth:`lowlux.model.LowLightNet.local`), channels last; the
                         result may be overwritten by the next ``local`` call (copy it to keep it)

``torch``
    The net itself (weight norm folded at load): eager, optionally channels-last, with bf16
    autocast on CPUs that have bf16 instructions and fp16 autocast on CUDA; on CUDA the three
    encoders can run on their own streams and the whole forward is replayed from a CUDA graph.
``openvino``
    The exported ONNX graphs (:mod:`lowlux.export`) compiled by OpenVINO for the CPU, in f32 or,
    where the CPU has bf16 instructions, bf16. Compiled per input shape (a fraction of a second),
    the last shape of each graph kept.
``onnxruntime``
    The same graphs on ONNX Runtime's CPU provider, f32.

Modules: :mod:`.base` (the interface, the precisions, the exported backends' common part),
:mod:`.torch_backend`, :mod:`.openvino_backend`, :mod:`.onnxruntime_backend` (one runtime each) and
:mod:`.choice`, where :func:`choose_backend` picks the fastest one installed that supports the device
and precision (:data:`AUTO_ORDER`), unless one is named (``EngineConfig.backend`` or the
``LOWLUX_BACKEND`` environment variable), and :func:`create_backend` builds it. The names the rest of
lowlux uses are imported from here.
"""

from .base import DTYPES, Backend, ExportedBackend
from .choice import (AUTO_ORDER, BACKEND_ENV, BACKENDS, BF16_VERDICTS, BYTES_PER_PIXEL, auto_dtype, bf16_units,
                     bytes_per_pixel, choose_backend, cpu_has_bf16, create_backend, installed, supports)
from .onnxruntime_backend import OnnxRuntimeBackend
from .openvino_backend import OpenVinoBackend
from .torch_backend import TorchBackend

__all__ = ["AUTO_ORDER", "BACKENDS", "BACKEND_ENV", "BF16_VERDICTS", "BYTES_PER_PIXEL", "DTYPES", "Backend", "ExportedBackend",
           "OnnxRuntimeBackend", "OpenVinoBackend", "TorchBackend", "auto_dtype", "bf16_units", "bytes_per_pixel", "choose_backend",
           "cpu_has_bf16", "create_backend", "installed", "supports"]
