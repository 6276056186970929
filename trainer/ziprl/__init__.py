"""ZipRL: multi-granularity context compression and Hindsight Response Replay for multi-turn agents.

* ``memory`` — the five-level compression memory (coarse relevance levels, fine rewrites by rules or
  by the policy through prompts) and the baselines (full history, uniform truncation, recency window);
* ``hrr`` — h_t and the generalised advantage reshaping, as pure functions;
* ``multihop`` — the synthetic multi-hop QA task (deterministic from a seed);
* ``env`` — its environment (``reset``/``step``) with a ``search`` tool (in-process BM25 or the
  retrieval service over HTTP); ``bm25`` — the bm25s index both use;
* ``episode`` — an episode loop with a memory and a scripted (non-learned) agent.

Nothing here imports torch: the engine plugs the policy in as a ``generate(prompt) -> text`` callable.
See docs/ziprl.md.
"""
