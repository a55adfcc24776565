"""Export a trained run for serving engines: a GGUF for llama.cpp (``gguf_export``).

``gguf_types`` holds the pure parts (which GGUF type a plan's bits become, our codes as GGUF
blocks, llama.cpp's row order of q/k); ``kquants`` (with its scale fits in ``kquant_fit``)
writes the K-quants ``gguf`` cannot; ``gguf_export`` reads a run and writes the file;
``gguf_lora`` writes its adapter as a GGUF LoRA adapter.
"""
