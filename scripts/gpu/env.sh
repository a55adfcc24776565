# Sourced by the GPU scripts: the carried packages and the copy of the checkout the runs use.
export PYTHONPATH=/root/site:/root/repo/src PYTHONUNBUFFERED=1
# TOKENIZERS_PARALLELISM is left unset: qra eval's batched tokenizing (eval.tokens) uses every
# core, which MMLU's 54,032 requests of a pilot cell need (docs/EVAL.md).
export PATH=/root/site/bin:$PATH
