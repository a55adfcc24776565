# Sourced by the GPU scripts: the carried packages and the copy of the checkout the runs use.
export PYTHONPATH=/root/site:/root/repo/src PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export PATH=/root/site/bin:$PATH
