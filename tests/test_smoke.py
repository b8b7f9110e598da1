from tests.support import ALICE, helper, run_as


def test_alice_maps_her_range(target):
    result = run_as(ALICE, [helper("newuidmap"), str(target.pid), "0", "23001", "1",
                            "1", "200000", "65536"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"" and result.stderr == b""
    assert target.uid_map() == [(0, 23001, 1), (1, 200000, 65536)]
