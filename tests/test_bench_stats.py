"""The statistics `fimstream bench collector` prints: its intervals must cover what they claim to."""
from __future__ import annotations

import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from bench_collector import _paired, hodges_lehmann  # noqa: E402


def test_hodges_lehmann_interval_covers_the_shift_about_95_percent_of_the_time():
    rng = random.Random(7)
    shift, n, trials = 0.02, 200, 200
    covered = 0
    widths = []
    for _ in range(trials):
        xs = [shift + rng.gauss(0, 0.15) for _ in range(n)]
        est, lo, hi = hodges_lehmann(xs)
        assert lo <= est <= hi
        covered += lo <= shift <= hi
        widths.append(hi - lo)
    assert 0.90 <= covered / trials <= 0.99, covered
    # the sign-test interval of the median is wider on the same noise: what the estimate is for
    baseline = [1.0] * n
    median_widths = []
    for _ in range(trials // 4):
        other = [1.0 + shift + rng.gauss(0, 0.15) for _ in range(n)]
        p = _paired(baseline, other)
        median_widths.append(p["ci95_pct"][1] - p["ci95_pct"][0])
    assert statistics.median(widths) * 100 < 0.9 * statistics.median(median_widths)


def test_hodges_lehmann_is_not_moved_by_a_few_slow_rounds():
    xs = [0.02] * 95 + [0.9] * 5  # five rounds caught in the host's slow spells
    est, lo, hi = hodges_lehmann(xs)
    assert abs(est - 0.02) < 1e-9 and statistics.mean(xs) > 0.06
