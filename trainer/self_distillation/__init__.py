"""Self-distillation in training runs: AMR-SD and π-Play (issue 17; ``specs/self_distillation.md``).

Modules: ``formulas`` (every formula as a small pure function: CIG, gates, annealing, Â = A·w,
difficulty reward, hop-grouped normalisation, λ's decay, EMA, the lumped top-k KL; the teacher
service imports them from here), ``leak_filter`` (hints may not give the answer away), ``config``
(the run config's ``self_distillation`` section), ``scoring`` (token log-probs and top-k under a
context), ``teacher`` (the teacher service over HTTP, or in process) and ``loop`` (the trainer's hooks).

Importing this package loads neither torch nor pydantic models; the teacher service's app starts without them.
"""
