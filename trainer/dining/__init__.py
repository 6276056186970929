"""DiningBench: multimodal food evaluation of an OpenAI-compatible VLM (docs/dining_bench.md).

- :mod:`trainer.dining.records`: the JSONL record layout, image selection, base64 ``image_url`` messages;
- :mod:`trainer.dining.metrics`: classification accuracy and unreadable share, nutrition MAE/RMSE/MAPE
  with the missing-value rules, VQA ROUGE (jieba tokens) and the LLM-judge yes/no verdict;
- :mod:`trainer.dining.runner`: the resumable run (results appended as they finish, a rerun skips
  finished record ids) against any chat backend;
- :mod:`trainer.dining.report`: the report from the records and the results file.

It lives in ``trainer`` (the library layer below ``services``) and imports no service: the chat
backend (``services.common.llm.OpenAIChatClient`` in ``rewardhub eval dining``) is passed in, so a
worker job can drive the same runner.
"""
