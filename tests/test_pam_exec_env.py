"""policy/pam_exec_env.py: what pam_exec(8) says, read from the tail of the environment block
it builds (PAM environment first, then its items in a fixed order, PAM_TYPE last); a name of the
PAM environment never passes for an item. Pure: no privilege."""

from __future__ import annotations

from nsgate.policy.pam_exec_env import parse


def block(*entries: bytes) -> bytes:
    return b"".join(entry + b"\0" for entry in entries)


def test_pam_exec_s_items_are_read():
    call = parse(block(b"LANG=C", b"PAM_SERVICE=sshd", b"PAM_USER=alice", b"PAM_TTY=ssh",
                       b"PAM_RHOST=10.0.0.1", b"PAM_TYPE=open_session"))
    assert call is not None
    assert (call.type, call.user, call.service) == (b"open_session", b"alice", b"sshd")
    assert call.items[b"PAM_RHOST"] == b"10.0.0.1"


def test_a_pam_environment_variable_never_passes_for_an_item():
    # PAM_USER set in the PAM environment (pam_env user_readenv), pam_exec's own later
    call = parse(block(b"PAM_USER=root", b"PAM_TYPE=close_session", b"PAM_SERVICE=login",
                       b"PAM_USER=alice", b"PAM_TYPE=open_session"))
    assert call is not None and (call.user, call.type) == (b"alice", b"open_session")


def test_no_pam_user_item_means_no_user_even_if_the_environment_has_one():
    # the item unset: pam_exec appends no PAM_USER; the PAM environment's stays unbelieved
    call = parse(block(b"PAM_SERVICE=x", b"PAM_USER=root", b"PAM_SERVICE=login",
                       b"PAM_TYPE=open_session"))
    assert call is not None and call.user is None and call.service == b"login"


def test_items_out_of_pam_exec_s_order_end_the_tail():
    call = parse(block(b"PAM_USER=root", b"PAM_SERVICE=login", b"PAM_TTY=tty1",
                       b"PAM_USER=mallory", b"PAM_TYPE=open_session"))
    # PAM_USER after PAM_TTY is not pam_exec's order: the tail is PAM_USER alone, no service
    assert call is None


def test_an_environment_pam_exec_did_not_build_is_refused():
    assert parse(b"") is None
    assert parse(block(b"PATH=/bin")) is None
    assert parse(block(b"PAM_TYPE=open_session", b"PATH=/bin")) is None  # not last
    assert parse(block(b"PAM_USER=alice", b"PAM_TYPE=open_session")) is None  # no service


def test_values_may_hold_equals_signs():
    call = parse(block(b"PAM_SERVICE=a=b", b"PAM_USER=u=v", b"PAM_TYPE=open_session"))
    assert call is not None and (call.service, call.user) == (b"a=b", b"u=v")
