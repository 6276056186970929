"""DiningBench VQA: ROUGE over jieba tokens on a hand-segmented pair, and the judge's whole-word verdict."""

from __future__ import annotations

import pytest

from trainer.dining.metrics import JiebaTokenizer, parse_verdict, rouge, vqa_metrics


def test_jieba_tokens_of_the_hand_segmented_pair() -> None:
    tokenizer = JiebaTokenizer()
    assert tokenizer.tokenize("这道菜是油炸的") == ["这", "道菜", "是", "油炸", "的"]
    assert tokenizer.tokenize("是油炸的。") == ["是", "油炸", "的"]  # punctuation is no token
    assert tokenizer.tokenize("Fried  rice.") == ["fried", "rice"]


def test_rouge_on_the_hand_segmented_pair() -> None:
    scores = rouge("这道菜是油炸的", "是油炸的")
    # unigrams: prediction 5 (这 道菜 是 油炸 的), reference 3 (是 油炸 的), overlap 3
    #   p = 3/5, r = 3/3, f = 2·0.6·1 / 1.6 = 0.75 (character-level would give p = 4/7)
    assert scores["rouge1"] == pytest.approx({"p": 0.6, "r": 1.0, "f": 0.75})
    # bigrams: prediction 4, reference 2 (是油炸, 油炸的), overlap 2: p = 0.5, r = 1, f = 2·0.5 / 1.5 = 2/3
    assert scores["rouge2"] == pytest.approx({"p": 0.5, "r": 1.0, "f": 2 / 3})
    # LCS 是 油炸 的 = 3: p = 3/5, r = 1, f = 0.75
    assert scores["rougeL"] == pytest.approx({"p": 0.6, "r": 1.0, "f": 0.75})


@pytest.mark.parametrize(("reply", "verdict"), [
    ("Yes", True), ("no", False), ("**Yes**.", True), ("Correct.", True), ("incorrect", False),
    ("The prediction is not correct.", False), ("Not correct", False), ("是", True), ("否。", False),
    ("不是", False), ("不正确", False), ("一致", True), ("<think>no wait, maybe</think>Yes", True),
    ("Yesterday I would have said so", None),  # "yesterday" is not "yes"
    ("No-brainer: they match", None),  # "no-brainer" is one word, not "no"
    ("This is a no-brainer, yes.", True), ("I know the answer", None),  # "know" holds no "no"
    ("Right or wrong, hard to say", None),  # a mix of verdicts is no verdict
    ("Yes and no", None), ("yes the answer matches", True), ("No, they differ", False),
    ("", None),
])
def test_judge_verdict_is_read_by_whole_words(reply: str, verdict: bool | None) -> None:
    assert parse_verdict(reply) is verdict


ITEMS = [("是油炸的", "这道菜是油炸的", "Yes"),  # R1 (p .6, r 1, f .75), R2 (.5, 1, 2/3); judged yes
         ("红烧", None, None),  # a failed call: ROUGE 0, judged no without a call
         ("fried rice", "Fried rice.", "yesterday")]  # R1 = R2 = 1; the reply is unparsed → no


def test_vqa_metrics_means_and_judge_accuracy() -> None:
    report = vqa_metrics(ITEMS)
    # rouge1: p (0.6+0+1)/3, r (1+0+1)/3, f (0.75+0+1)/3 = 0.58333
    assert report["rouge1"] == pytest.approx({"p": 1.6 / 3, "r": 2 / 3, "f": 1.75 / 3})
    # rouge2: f (2/3 + 0 + 1)/3 = 0.5556
    assert report["rouge2"]["f"] == pytest.approx((2 / 3 + 1) / 3)
    # judge: 1 yes of 3 judged, 1 unparsed
    assert (report["judged"], report["judge_yes"], report["judge_unparsed"]) == (3, 1, 1)
    assert report["judge_accuracy"] == pytest.approx(1 / 3)


def test_vqa_metrics_without_a_judge_report_rouge_only() -> None:
    report = vqa_metrics(ITEMS, judge=False)
    assert report["judge_accuracy"] is None and report["judged"] == 0
    assert report["rouge_n"] == 3
