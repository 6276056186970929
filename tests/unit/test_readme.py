"""The README documents what the code does: the two set-up commands first, every setting."""

from __future__ import annotations

from pathlib import Path

from services.common.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()

# Settings the README documents together in one row.
GROUPED = {"gateway_url", "verifier_url", "rubric_rm_url", "rec_rm_url", "annotation_url", "teacher_url",
           "trainer_url"}
UNPREFIXED = {"database_url": "DATABASE_URL", "redis_url": "REDIS_URL"}


def test_readme_opens_with_the_two_commands() -> None:
    first_block = README.split("```bash\n", 1)[1].split("```", 1)[0].strip().splitlines()
    assert [line.split()[0:2] for line in first_block] == [["make", "up"], ["make", "test"]]


def test_every_setting_is_documented() -> None:
    for name in Settings.model_fields:
        if name in GROUPED:
            assert "REWARDHUB_<SERVICE>_URL" in README
            assert name.removesuffix("_url").upper() in README
            continue
        variable = UNPREFIXED.get(name, f"REWARDHUB_{name.upper()}")
        assert f"`{variable}`" in README, f"{variable} is missing from the README's configuration table"
