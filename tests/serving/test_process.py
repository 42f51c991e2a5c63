"""The server's process set-up (`serving.process`); the processes themselves run in tests/test_cli.py."""

from serving.process import huge_pages_environment


def test_huge_pages_are_added_to_the_tunables_and_an_operators_setting_is_kept():
    assert huge_pages_environment({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    assert huge_pages_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})["GLIBC_TUNABLES"] == (
        "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1")
    off = {"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0", "PATH": "/bin"}
    assert huge_pages_environment(off) == off

