"""The compute engine: attacks, the training loop, fine-tuning, source pre-training and
the frozen-prefix feature cache. Everything above it (study, influence, saliency, CLI)
calls into these modules; they import nothing from above."""
