"""The built-in corpora: deterministic, big enough, fast, varied, well-formed stories and instruction records."""

import re
import statistics

from slm_core.data import corpus
from slm_core.data.corpus import builtin_instructions, builtin_stories


def test_default_stories_are_over_5mb_and_no_more_are_generated_than_asked(monkeypatch):
    """Generation stops at the first story past 6M characters (how long that takes: benchmarks/bench_data.py
    --timings)."""
    generated = []
    real_story = corpus._story
    monkeypatch.setattr(corpus, "_story", lambda rng, *a, **kw: generated.append(1) or real_story(rng, *a, **kw))
    stories = builtin_stories()
    total = sum(len(s) for s in stories)
    assert total >= 6_000_000 and total - len(stories[-1]) < 6_000_000
    assert len(generated) <= len(stories) + 1  # the loop draws one story to see that it is done


def test_stories_are_deterministic_and_seeded():
    assert builtin_stories(200_000, seed=0) == builtin_stories(200_000, seed=0)
    assert builtin_stories(50_000, seed=1) != builtin_stories(50_000, seed=0)


def test_a_smaller_corpus_is_a_prefix_of_a_larger_one():
    small, large = builtin_stories(100_000), builtin_stories(300_000)
    assert large[: len(small)] == small


def test_stories_are_short_well_formed_and_varied():
    stories = builtin_stories(1_000_000, seed=5)
    lengths = [len(s) for s in stories]
    assert min(lengths) >= 400 and max(lengths) <= 1600
    assert 600 <= statistics.mean(lengths) <= 1300
    assert len(set(stories)) == len(stories)
    for story in stories:
        assert not re.search(r"[{}\[\]|]", story), story  # every template slot was filled
        assert not re.search(r"  |\s[.,!?]|\.\.", story), story
        assert story[0].isupper() and story.rstrip()[-1] in '.!"', story
    with_dialogue = sum('"' in s for s in stories)
    assert with_dialogue > 0.9 * len(stories)
    openings = {s.split(".")[0] for s in stories}
    assert len(openings) > 0.5 * len(stories)  # names x traits x kinds x places: few repeats


def test_quotes_are_balanced():
    for story in builtin_stories(200_000, seed=2):
        assert story.count('"') % 2 == 0, story


def test_instructions_are_well_formed_alpaca_records():
    records = builtin_instructions(seed=0)
    assert len(records) >= 2000
    assert records == builtin_instructions(seed=0)
    for rec in records:
        assert set(rec) == {"instruction", "input", "output"}
        assert all(isinstance(v, str) for v in rec.values())
        assert rec["instruction"].strip() and rec["output"].strip()
        assert not re.search(r"[{}\[\]|]", rec["instruction"] + rec["output"])
    kinds = {" ".join(r["instruction"].split()[:3]) for r in records}  # e.g. "Where does the"
    assert len(kinds) >= 10


def test_story_answers_agree_with_the_story():
    records = builtin_instructions(seed=1, n=500)
    for rec in records:
        if rec["instruction"] == "Who is the main character of this story?":
            name = rec["output"].split()[4].rstrip(",")
            assert name in rec["input"]
        if rec["instruction"] == "Where does the story take place?":
            place = rec["output"].removeprefix("The story takes place ").rstrip(".")
            assert place in rec["input"]
