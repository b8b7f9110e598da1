"""What pam_exec(8) tells the command it runs, read from the environment block it built.

pam_exec passes the PAM environment (pam_getenvlist: variables modules and, through pam_env's
`user_readenv` and the like, sometimes the user put there), then appends the PAM items it
exports, in a fixed order and only those that are set: PAM_SERVICE (always set: pam_start needs
it), PAM_USER, PAM_TTY, PAM_RHOST, PAM_RUSER, and last PAM_TYPE. A variable of the PAM
environment may carry the same name as an item: getenv(3), and Python's os.environ, would return
that first one. So the items are read from the tail of the block only, walking back from
PAM_TYPE through names in pam_exec's order down to PAM_SERVICE; anything before is the PAM
environment and is never believed. A block that does not end that way was not built by pam_exec.
"""

ITEM_ORDER = (b"PAM_SERVICE", b"PAM_USER", b"PAM_TTY", b"PAM_RHOST", b"PAM_RUSER")


class PamCall:
    """The module type (`open_session`, `close_session`, `auth` ...) and the items set."""

    __slots__ = ("items", "type")

    def __init__(self, type_: bytes, items: dict[bytes, bytes]) -> None:
        self.type = type_
        self.items = items

    @property
    def user(self) -> bytes | None:
        return self.items.get(b"PAM_USER")

    @property
    def service(self) -> bytes:
        return self.items[b"PAM_SERVICE"]


def parse(environ: bytes) -> PamCall | None:
    """The call pam_exec describes in `environ` (NUL-separated NAME=VALUE entries, as
    /proc/self/environ shows them), or None if pam_exec did not build it."""
    entries = environ.split(b"\0")
    if entries and entries[-1] == b"":
        entries.pop()
    if not entries or not entries[-1].startswith(b"PAM_TYPE="):
        return None
    type_ = entries[-1][len(b"PAM_TYPE="):]
    items: dict[bytes, bytes] = {}
    below = len(ITEM_ORDER)  # each earlier item must come earlier in ITEM_ORDER
    for entry in reversed(entries[:-1]):
        name, equals, value = entry.partition(b"=")
        if not equals or name not in ITEM_ORDER[:below]:
            break
        below = ITEM_ORDER.index(name)
        items[name] = value
        if below == 0:
            break
    if b"PAM_SERVICE" not in items:
        return None
    return PamCall(type_, items)
