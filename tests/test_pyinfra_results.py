from pyinfra_results import parse_results

SAMPLE = """
--> Results:
    Operation                                                        Hosts   Success   Error   No Change   
    vlmfleet hello | Create /etc/vlmfleet                            3       3         -       -           
    vlmfleet hello | Install jq                                      3       -         -       3           
    vlmfleet hello | Restart vlmfleet-hello.service after a change   3       1         1       1           
    Grand total                                                      9       4         1       4           

--> Disconnecting from hosts...
"""


def test_parse_results_reads_every_row_by_value():
    rows = parse_results(SAMPLE)
    assert [(r.operation, r.hosts, r.changed, r.errors, r.unchanged) for r in rows] == [
        ("vlmfleet hello | Create /etc/vlmfleet", 3, 3, 0, 0),
        ("vlmfleet hello | Install jq", 3, 0, 0, 3),
        ("vlmfleet hello | Restart vlmfleet-hello.service after a change", 3, 1, 1, 1),
    ]


def test_parse_results_refuses_output_without_a_table():
    import pytest

    with pytest.raises(AssertionError, match="no Results table"):
        parse_results("--> Loading inventory...\nerror\n")
