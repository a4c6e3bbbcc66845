"""RL for language models in miniature: token tasks (`bench.lm.tasks`) and a slot-batched
causal transformer (`bench.lm.transformer`)."""
