"""DiningBench nutrition: parsing, the missing-value rules and MAE/RMSE/MAPE per nutrient, hand-computed."""

from __future__ import annotations

import math

import pytest

from trainer.dining.metrics import nutrient_value, nutrition_metrics, parse_json_object, read_prediction


def test_parse_order_whole_then_fence_then_braces() -> None:
    assert parse_json_object('{"fat": 1}') == {"fat": 1}
    assert parse_json_object('Here:\n```json\n{"fat": 2}\n```\nthanks') == {"fat": 2}
    assert parse_json_object('I estimate {"fat": 3} for this dish') == {"fat": 3}
    # first { … last } does not parse: the first object that decodes at the first {
    assert parse_json_object('{"fat": 4} or maybe {"fat": 5}') == {"fat": 4}
    assert parse_json_object("no numbers at all") is None
    assert parse_json_object("[1, 2]") is None


@pytest.mark.parametrize(("value", "number"), [
    (350, 350.0), ("350.5", 350.5), (" 12 ", 12.0), ("350 kcal", None), (True, None), (None, None),
    ("nan", None), (float("inf"), None), ([1], None),
])
def test_nutrient_value_is_a_number_or_a_numeric_string(value: object, number: float | None) -> None:
    assert nutrient_value(value) == number


def test_a_prediction_missing_one_nutrient_is_a_parse_failure_under_the_authors_rule() -> None:
    values, parsed = read_prediction('{"calories": 1, "protein": 2, "carbohydrates": 3}')
    assert (values, parsed) == ({"calories": None, "protein": None, "carbohydrates": None, "fat": None}, False)
    values, parsed = read_prediction('{"calories": 1, "protein": 2, "carbohydrates": 3}', per_value=True)
    assert (values, parsed) == ({"calories": 1.0, "protein": 2.0, "carbohydrates": 3.0, "fat": None}, False)
    values, parsed = read_prediction('{"卡路里": 1, "蛋白质": 2, "碳水化合物": 3, "脂肪": "4"}')
    assert (values, parsed) == ({"calories": 1.0, "protein": 2.0, "carbohydrates": 3.0, "fat": 4.0}, True)


PAIRS = [
    # 1: all four parse. errors: cal 50, protein 5, carbs 0, fat 10; APE 10 %, 25 %, 0 %, 100 %
    ({"calories": 500, "protein": 20, "carbohydrates": 60, "fat": 10},
     '{"calories": 550, "protein": "25", "carbohydrates": 60, "fat": 0}'),
    # 2: Chinese gold keys; fat missing → authors' rule: all four missing, error |gt|:
    #    cal 200 (APE 100 %), protein 0 (gold 0: no APE), carbs 30 (100 %), fat 5 (100 %)
    ({"卡路里": 200, "蛋白质": 0, "碳水化合物": 30, "脂肪": 5},
     '```json\n{"calories": 260, "protein": 4, "carbohydrates": 30}\n```'),
    # 3: a failed call; the gold lacks fat (fat skipped): cal 100, protein 10, carbs 10, each 100 %
    ({"calories": 100, "protein": 10, "carbohydrates": 10}, None),
]


def test_nutrition_metrics_authors_rule() -> None:
    report = nutrition_metrics(PAIRS)
    assert (report["n"], report["parse_failures"]) == (3, 2)
    nut = report["nutrients"]
    # calories: MAE (50+200+100)/3 = 116.667; RMSE √((2500+40000+10000)/3) = √17500 = 132.288; MAPE (10+100+100)/3 = 70
    assert nut["calories"] == pytest.approx({"n": 3, "missing": 2, "mae": 350 / 3, "rmse": math.sqrt(17500), "mape": 70.0})
    # protein: MAE (5+0+10)/3 = 5; RMSE √((25+0+100)/3) = 6.455; MAPE over gold ≠ 0: (25+100)/2 = 62.5
    assert nut["protein"] == pytest.approx({"n": 3, "missing": 2, "mae": 5.0, "rmse": math.sqrt(125 / 3), "mape": 62.5})
    # carbohydrates: MAE (0+30+10)/3 = 13.333; RMSE √((0+900+100)/3) = 18.257; MAPE (0+100+100)/3 = 66.667
    assert nut["carbohydrates"] == pytest.approx({"n": 3, "missing": 2, "mae": 40 / 3, "rmse": math.sqrt(1000 / 3),
                                                  "mape": 200 / 3})
    # fat (record 3 skipped): MAE (10+5)/2 = 7.5; RMSE √((100+25)/2) = 7.906; MAPE (100+100)/2 = 100; the
    # predicted 0 of record 1 is a value, not a missing one
    assert nut["fat"] == pytest.approx({"n": 2, "missing": 1, "mae": 7.5, "rmse": math.sqrt(62.5), "mape": 100.0})


def test_nutrition_metrics_per_value_rule_keeps_the_given_nutrients() -> None:
    nut = nutrition_metrics(PAIRS, per_value=True)["nutrients"]
    # record 2 keeps cal 260 (error 60, 30 %), protein 4 (error 4, gold 0), carbs 30 (0); fat still missing (5)
    # calories: MAE (50+60+100)/3 = 70; MAPE (10+30+100)/3 = 46.667
    assert nut["calories"]["mae"] == pytest.approx(70.0) and nut["calories"]["mape"] == pytest.approx(140 / 3)
    # protein: MAE (5+4+10)/3 = 6.333; MAPE (25+100)/2 = 62.5 (gold 0 skipped)
    assert nut["protein"]["mae"] == pytest.approx(19 / 3) and nut["protein"]["mape"] == pytest.approx(62.5)
    assert (nut["calories"]["missing"], nut["fat"]["missing"]) == (1, 1)


def test_mape_is_none_when_every_gold_value_is_zero() -> None:
    nut = nutrition_metrics([({"calories": 0, "protein": 0, "carbohydrates": 0, "fat": 0},
                               '{"calories": 5, "protein": 0, "carbohydrates": 0, "fat": 0}')])["nutrients"]
    assert nut["calories"] == {"n": 1, "missing": 0, "mae": 5.0, "rmse": 5.0, "mape": None}
