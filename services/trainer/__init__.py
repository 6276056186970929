"""The trainer service: GRPO-family training runs, each in its own worker process."""
