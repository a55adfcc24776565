"""A compressed-tensors folder read back as a dense transformers model, scheme by scheme.

Two ways in, because transformers (5.25 with compressed-tensors 0.20.1) cannot load every
folder ``ct_export`` writes:

- ``AutoModelForCausalLM.from_pretrained(DIR)`` (weights left compressed) fails on any
  asymmetric pack-quantized folder: compressed-tensors shapes the model's packed zero point
  for the meta device as if unpacked ((rows, groups) instead of (rows / (32 / bits), groups)),
  and transformers refuses the size mismatch (llm-compressor issue #1618). A symmetric folder
  (quant_method "symmetric": no zero point) loads this way too, with the same logits.
- ``from_pretrained(DIR, quantization_config=CompressedTensorsConfig(dequantize=True))``
  loads, but dequantises every linear with one config group's scheme (``get_dense_scheme``):
  right for a plan at one bit-width, wrong for a mixed one.

``transformers_model`` takes the second way for a folder of one config group and refuses a
mixed one; ``decompressed_model`` works for every folder: it builds the model dense and
dequantises each linear with compressed-tensors' own ``PackedQuantizationCompressor`` under
the scheme of the config group that targets it, which is how vLLM assigns schemes (by the
targets, layer by layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def transformers_model(folder: str | Path, dtype: Any = None) -> Any:
    """The folder through transformers' compressed-tensors loader (dequantised at load).

    Raises:
        ValueError: for a folder with more than one config group (see module docstring).
    """
    import json

    from transformers import AutoModelForCausalLM, CompressedTensorsConfig

    groups = json.loads((Path(folder) / "config.json").read_text())["quantization_config"]["config_groups"]
    if len(groups) > 1:
        raise ValueError(
            f"{str(folder)!r} has {len(groups)} config groups ({', '.join(groups)}); transformers "
            "dequantises every linear with one of them, so read it with decompressed_model"
        )
    config = CompressedTensorsConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(str(folder), quantization_config=config, dtype=dtype).eval()


def decompressed_model(folder: str | Path, dtype: Any = None) -> Any:
    """The folder as a dense model, each linear dequantised by compressed-tensors under its own
    config group's scheme; ``dtype`` (default float32) of the model."""
    import torch
    from compressed_tensors.compressors import PackedQuantizationCompressor
    from compressed_tensors.quantization import QuantizationConfig
    from safetensors.torch import load_file
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = dtype or torch.float32
    config = AutoConfig.from_pretrained(str(folder))
    quant = QuantizationConfig.model_validate(config.quantization_config)
    del config.quantization_config
    state = {}
    for path in sorted(Path(folder).glob("*.safetensors")):
        state.update(load_file(str(path)))
    for scheme in quant.config_groups.values():
        for target in scheme.targets:
            parts = {key: state.pop(f"{target}.{key}") for key in _PARTS if f"{target}.{key}" in state}
            state[f"{target}.weight"] = PackedQuantizationCompressor.decompress(parts, scheme)["weight"]
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    missing, unexpected = model.load_state_dict({k: v.to(dtype) for k, v in state.items()}, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing), (missing, unexpected)
    model.tie_weights()
    return model.eval()


_PARTS = ("weight_packed", "weight_scale", "weight_zero_point", "weight_shape")
