from fimstream.detector.correlate import Correlation, Correlator
from fimstream.events import enriched_event

S = 1_000_000_000


def ev(t, etype="open", path="/tmp/x", container="c1", pid=10):
    e = enriched_event(etype, path, container_id=container, process={"pid": pid, "start_time_ns": 1})
    e["time_ns"] = t * S
    return e


def test_sequence_fires_in_order_within_window_and_same_path():
    same_path = lambda e: e["file"]["path"]
    c = Correlation("dropper", "sequence", 60 * S, steps=("tmp_write", "tmp_exec"), same=(same_path,))
    k = Correlator([c])
    w = ev(0, "write", "/tmp/evil")
    assert k.observe(ev(1, "exec", "/tmp/evil"), "tmp_exec") == []  # out of order: nothing
    assert k.observe(w, "tmp_write") == []
    assert k.observe(ev(2, "exec", "/tmp/other"), "tmp_exec") == []  # different path
    [fired] = k.observe(ev(3, "exec", "/tmp/evil"), "tmp_exec")
    assert fired.related == [w["event_id"]]
    assert k.observe(ev(4, "exec", "/tmp/evil"), "tmp_exec") == []  # consumed


def test_sequence_expires_after_window_and_is_per_container():
    c = Correlation("seq", "sequence", 10 * S, steps=("a", "b"))
    k = Correlator([c])
    k.observe(ev(0, container="c1"), "a")
    assert k.observe(ev(5, container="c2"), "b") == []  # other container
    assert k.observe(ev(11, container="c1"), "b") == []  # too late
    k.observe(ev(20, container="c1"), "a")
    assert len(k.observe(ev(25, container="c1"), "b")) == 1


def test_threshold_counts_in_sliding_window_and_rearms():
    c = Correlation("mass_delete", "threshold", 60 * S, by="process", steps=("log_deleted",), count=3)
    k = Correlator([c])
    assert k.observe(ev(0), "log_deleted") == []
    assert k.observe(ev(100), "log_deleted") == []  # first one slid out
    assert k.observe(ev(110), "log_deleted") == []
    [f] = k.observe(ev(120), "log_deleted")
    assert len(f.related) == 2
    assert k.observe(ev(121), "log_deleted") == []  # re-armed


def test_score_sums_any_rules_per_entity():
    c = Correlation("risk", "score", 300 * S, min_score=100)
    k = Correlator([c])
    assert k.observe(ev(0), "r1", score=40) == []
    assert k.observe(ev(1, container="other"), "r2", score=90) == []
    [f] = k.observe(ev(2), "r3", score=60)
    assert f.score == 100 and len(f.related) == 1


def test_state_is_bounded_and_swept():
    c = Correlation("seq", "sequence", 10 * S, steps=("a", "b"))
    k = Correlator([c], max_keys=100)
    for i in range(1000):
        k.observe(ev(0, container=f"c{i}"), "a")
    k.sweep(5 * S)
    assert k.stats.tracked == 100 and k.stats.evicted == 900
    k.sweep(100 * S)
    assert k.stats.tracked == 0


def test_sequence_step_may_accept_any_of_several_rules():
    c = Correlation("seq", "sequence", 10 * S, steps=("w", ("x1", "x2")))
    k = Correlator([c])
    k.observe(ev(0), "w")
    assert len(k.observe(ev(1), "x2")) == 1
    k.observe(ev(2), "w")
    assert len(k.observe(ev(3), "x1")) == 1


def test_a_rule_that_is_several_steps_is_observed_once_per_match():
    c = Correlation("twice", "sequence", 10 * S, steps=("a", "a"))
    k = Correlator([c])
    assert k.observe(ev(0), "a") == []  # one match is one step, not both
    assert len(k.observe(ev(1), "a")) == 1


def test_disabled_correlations_do_not_run():
    k = Correlator([Correlation("off", "threshold", 10 * S, steps=("a",), count=2, enabled=False)])
    assert k.correlations == [] and k.observe(ev(0), "a") == [] and k.observe(ev(1), "a") == []


def test_previous_state_is_kept_only_for_equal_state_versions():
    old = Correlation("t", "threshold", 60 * S, steps=("a",), count=2, state_version="v1")
    k = Correlator([old, Correlation("u", "threshold", 60 * S, steps=("a",), count=2)])
    k.observe(ev(0), "a")
    same = Correlator([old, Correlation("u", "threshold", 60 * S, steps=("a",), count=2)], previous=k)
    assert same.kept_state == ["t"]  # u has no state_version: hand-made definitions always start over
    assert [f.correlation.id for f in same.observe(ev(1), "a")] == ["t"]
    changed = Correlator([Correlation("t", "threshold", 60 * S, steps=("a",), count=2, state_version="v2")],
                         previous=same)
    assert changed.kept_state == [] and changed.observe(ev(2), "a") == []
