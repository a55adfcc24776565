"""Evaluation: perplexity, the seven zero-shot tasks, GSM8K and MMLU, all from offline copies.

Modules, each importable on its own:
    loglik            batched, padding-aware log-likelihood of (context, continuation) pairs,
                      tokenised as lm-evaluation-harness tokenises them
    perplexity        token-level perplexity over fixed windows (non-overlapping or strided)
    tasks             the seven multiple-choice tasks as the harness builds their requests
    multiple_choice   acc / acc_norm and their standard errors from log-likelihoods
    harness           lm-evaluation-harness itself on the same offline files (HFLM around
                      an in-memory model)
    generate, gsm8k   greedy batched generation; GSM8K 8-shot CoT with the harness's extraction
    mmlu              MMLU 5-shot by log-likelihood of the answer letter
    suite, results    the task registry and groups, records as JSON and a table
"""
