"""The search stage's lines about the data: what a user reads before the search starts."""

from cxr_tuner.search.run import audit_line


def test_the_demo_says_why_its_audit_finds_look_alikes_and_a_users_data_does_not_get_the_excuse():
    counts = {"near_duplicate_groups": 1, "cross_label_groups": 1, "groups_across_splits": 0}
    demo = audit_line(counts, "run/audit.csv", demo=True)
    assert demo.startswith("leakage audit of the split: near_duplicate_groups 1, cross_label_groups 1")
    assert "look-alikes by chance" in demo and "docs/first-run.md" in demo
    assert "look-alikes" not in audit_line(counts, "run/audit.csv", demo=False)
    assert "look-alikes" not in audit_line({"near_duplicate_groups": 0, "cross_label_groups": 0}, "a", demo=True)
