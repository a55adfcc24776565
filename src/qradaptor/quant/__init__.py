"""Weight quantisation: exact k-bit packing, RTN and HQQ-style fits, packed modules.

Knows nothing of LoRA, plans or models.
"""

from qradaptor.quant.bitpack import pack, packed_nbytes, unpack
from qradaptor.quant.modules import QuantEmbedding, QuantLinear, simulated_linear
from qradaptor.quant.quantizer import (
    QUANT_METHODS,
    QuantizedTensor,
    dequantize,
    quantize,
    relative_error,
)

__all__ = [
    "QUANT_METHODS",
    "QuantEmbedding",
    "QuantLinear",
    "QuantizedTensor",
    "dequantize",
    "pack",
    "packed_nbytes",
    "quantize",
    "relative_error",
    "simulated_linear",
    "unpack",
]
