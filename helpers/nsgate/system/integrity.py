"""Before anything else: the code this process runs must come only from root-owned files in
root-owned directories that neither group nor others can write (security-cases C3).

Checked: the interpreter, every directory on sys.path and each of its ancestors, the nsgate
package tree (before any of it is imported beyond this module), and every module loaded so far.
`verify_loaded_modules` runs again right before the first side effect, to cover later imports.

`root_only` is that rule for every file nsgate trusts (its data files too): it lives here because
this module runs before any other of the package is checked, and so imports none of them.
"""

import posix
import sys

from nsgate.errors import Refusal

S_IFMT, S_IFDIR, S_IFREG = 0o170000, 0o040000, 0o100000
_checked: set[str] = set()
_verified: dict[str, object] = {}  # module name: the module object whose files were checked


def root_only(st: posix.stat_result, kind: int | None = S_IFREG) -> bool:
    """Whether only root can change what `st` describes: owned by root, writable by neither
    group nor others, and of `kind` (S_IFREG, S_IFDIR; None: of any kind)."""
    return (st.st_uid == 0 and not st.st_mode & 0o022
            and (kind is None or st.st_mode & S_IFMT == kind))


def _check(path: str) -> None:
    if path in _checked:
        return
    try:
        st = posix.stat(path)
    except OSError as err:
        raise Refusal(f"refusing to run: cannot check {path}: {err.strerror}") from None
    _check_stat(path, st)


def _check_stat(path: str, st: posix.stat_result) -> None:
    if not root_only(st, None):
        hint = []
        if st.st_uid == 65534:
            hint.append("uid 65534 is also how root appears inside a user namespace that does "
                        "not map it: run the helper from the initial user namespace")
        raise Refusal(f"refusing to run: {path} is owned by uid {st.st_uid} with mode "
                      f"{st.st_mode & 0o7777:04o}",
                      "code that runs as root must be owned by root and not writable by group or "
                      "others: reinstall nsgate, or fix the owner and mode of that path", *hint)
    _checked.add(path)


def _check_with_ancestors(path: str) -> None:
    while path not in ("", "/"):
        _check(path)
        path = path.rsplit("/", 1)[0]
    _check("/")


def _check_tree(top: str) -> None:
    _check(top)
    _check_entries(top)


def _check_entries(directory: str) -> None:
    for entry in posix.scandir(directory):
        _check_stat(entry.path, entry.stat(follow_symlinks=False))  # a symlink is no dir here
        if entry.is_dir(follow_symlinks=False):
            _check_entries(entry.path)


def _check_link(path: str, st: posix.stat_result) -> None:
    """A root-owned symlink directly in the library directory to a regular file (a distribution
    package's link to the system's _cffi_backend): the file, as the kernel resolves the link,
    must pass the same check, and so must each of its ancestors."""
    if st.st_uid != 0:
        _check_stat(path, st)  # refuses, naming the owner
    try:
        fd = posix.open(path, posix.O_PATH | posix.O_CLOEXEC)
    except OSError as err:
        raise Refusal(f"refusing to run: cannot check {path}: {err.strerror}") from None
    try:
        target = posix.readlink(f"/proc/self/fd/{fd}")
        target_st = posix.fstat(fd)
    finally:
        posix.close(fd)
    if target_st.st_mode & S_IFMT != S_IFREG:
        raise Refusal(f"refusing to run: {path} links to {target}, which is not a regular file",
                      "only a link to a single file is accepted in the library directory")
    if target != lexical_target(path):
        raise Refusal(f"refusing to run: {path} reaches {target} through another symbolic link",
                      "whoever owns that other link could point it elsewhere after this check: "
                      "link straight to the file")
    _check_stat(target, target_st)
    _check_with_ancestors(target)
    _checked.add(path)


def lexical_target(link: str) -> str:
    """Where `link` points by its text alone, with no other link followed."""
    import posixpath

    return posixpath.normpath(posixpath.join(posixpath.dirname(link), posix.readlink(link)))


def verify_startup(libdir: str) -> None:
    """`libdir` holds the nsgate package and the compiled modules it loads."""
    _check_with_ancestors(posix.readlink("/proc/self/exe"))
    for entry in sys.path:
        try:
            posix.stat(entry)
        except OSError:
            continue  # absent (python311.zip): nothing can be imported from it
        _check_with_ancestors(entry)
    for item in posix.scandir(libdir):
        if item.is_symlink():
            _check_link(item.path, item.stat(follow_symlinks=False))
        elif not item.is_dir(follow_symlinks=False):
            _check_stat(item.path, item.stat(follow_symlinks=False))
    _check_tree(libdir + "/nsgate")
    verify_loaded_modules()


def verify_loaded_modules() -> None:
    """Every module loaded and not yet checked (nsgated's workers check only what a request
    loaded since their parent checked everything)."""
    for name, module in list(sys.modules.items()):
        if _verified.get(name) is module:
            continue
        for attr in ("__file__", "__cached__"):
            path = getattr(module, attr, None)
            if isinstance(path, str) and path.startswith("/") and path not in _checked:
                try:
                    posix.stat(path)
                except OSError:
                    continue  # a __cached__ path that was never written
                _check(path)
        _verified[name] = module
