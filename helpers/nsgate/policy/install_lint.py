"""`nsgate check` for files and the install: ownership and modes (the rule the helpers apply
when they open a file or load code), setuid bits and file capabilities of the helpers. Facts
(stat results, the security.capability attribute) in, findings out."""

from nsgate.policy.findings import Finding

S_IFMT, S_IFREG, S_IFDIR, S_IFLNK = 0o170000, 0o100000, 0o040000, 0o120000
S_ISUID, S_ISGID = 0o4000, 0o2000
CAP_SETGID, CAP_SETUID = 6, 7
VFS_CAP_FLAGS_EFFECTIVE = 0x000001
_VFS_CAP_SIZES = {0x01000000: 12, 0x02000000: 20, 0x03000000: 24}  # revision -> xattr size

# helper -> the capability that may stand in for the setuid bit (None: setuid root required,
# "": must have no privilege at all)
HELPERS: dict[str, int | str | None] = {"newuidmap": CAP_SETUID, "newgidmap": CAP_SETGID,
                                        "getsubids": "", "lxc-user-nic": None}
CAP_NAMES = {CAP_SETUID: "cap_setuid", CAP_SETGID: "cap_setgid"}
# The code every nsgate launcher embeds and hands the interpreter (csrc/launcher.c), for `name`.
LAUNCHER_CODE = "from nsgate.cli.entry import run;run('{}')"


class Stat:
    """What lstat says of a path: None fields when it does not exist."""

    __slots__ = ("mode", "path", "uid")

    def __init__(self, path: str, uid: int | None, mode: int | None) -> None:
        self.path = path
        self.uid = uid
        self.mode = mode

    @property
    def exists(self) -> bool:
        return self.mode is not None


def _bits(mode: int) -> str:
    return f"{mode & 0o7777:04o}"


def effective_capabilities(xattr: bytes | None) -> int:
    """The capabilities a file's security.capability raises on exec (permitted, when the
    effective flag is set), as a bit mask; 0 for none or an unreadable attribute."""
    if xattr is None or len(xattr) < 4:
        return 0
    magic = int.from_bytes(xattr[:4], "little")
    if _VFS_CAP_SIZES.get(magic & 0xFF000000) != len(xattr):
        return 0
    if not magic & VFS_CAP_FLAGS_EFFECTIVE:
        return 0
    if len(xattr) == 24 and int.from_bytes(xattr[20:24], "little") != 0:
        # A namespaced capability (revision 3) whose root is not host uid 0: the kernel honours
        # it only in user namespaces that user is root of, never in the host's.
        return 0
    permitted = int.from_bytes(xattr[4:8], "little")
    if len(xattr) >= 20:
        permitted |= int.from_bytes(xattr[12:16], "little") << 32
    return permitted


def unsafe(st: Stat, what: str, power: str = "decides who gets which ids") -> str | None:
    """Why a file or directory nsgate trusts cannot be trusted, else None (files.open_trusted's
    rule: no symlink, root-owned, not writable by group or others). `power`: what whoever can
    change it decides."""
    if st.mode is None or st.uid is None:
        return None
    kind = st.mode & S_IFMT
    if kind == S_IFLNK:
        return (f"{what} {st.path} is a symbolic link, which nsgate (like shadow) does not "
                f"follow: replace it with a regular file")
    problems = []
    if st.uid != 0:
        problems.append(f"owned by uid {st.uid}")
    if st.mode & 0o022:
        problems.append(f"writable by {'group' if st.mode & 0o020 else 'others'} "
                        f"(mode {_bits(st.mode)})")
    if not problems:
        return None
    return (f"{what} {st.path} is {' and '.join(problems)}: whoever can change it {power}; "
            f"chown root {st.path}; chmod go-w {st.path}")


def lint_trusted_file(file: Stat, ancestors: list[Stat]) -> list[Finding]:
    """A configuration file (if present) and its directories up to /."""
    if not file.exists:
        return []
    findings = []
    reason = unsafe(file, "the file")
    if reason is not None:
        findings.append(Finding(file.path, None, "unsafe-file", reason))
    for directory in ancestors:
        reason = unsafe(directory, "its directory")
        if reason is not None:
            findings.append(Finding(file.path, None, "unsafe-file", reason))
    return findings


def lint_helper(name: str, st: Stat, capabilities: int, service_only: bool = False
                ) -> list[Finding]:
    """A helper's file. `service_only`: the install is for the service (no helper has privilege,
    on purpose), so a helper lacking privilege is no defect; the service check reports whether
    it can work (policy.service_lint)."""
    def finding(message: str) -> Finding:
        return Finding(st.path, None, "install", message)

    if st.mode is None:
        return [finding(f"{name} is missing: reinstall nsgate (make install, or the package)")]
    if st.mode & S_IFMT != S_IFREG:
        return [finding(f"{name} is not a regular file: reinstall nsgate")]
    found = []
    if st.uid != 0:
        found.append(finding(f"{name} is owned by uid {st.uid}: whoever owns it can run code "
                             f"as root; chown root:root {st.path}, or reinstall"))
    if st.mode & 0o022:
        found.append(finding(f"{name} is writable by group or others (mode {_bits(st.mode)}): "
                             f"chmod go-w {st.path}"))
    setuid_root = bool(st.mode & S_ISUID) and st.uid == 0
    need = HELPERS[name]
    if service_only and need != "":
        return found
    if need == "":
        if st.mode & (S_ISUID | S_ISGID):
            found.append(finding(f"{name} must run without privilege, yet it is setuid or "
                                 f"setgid (mode {_bits(st.mode)}): chmod 0755 {st.path}"))
        elif capabilities:
            found.append(finding(f"{name} must run without privilege, yet it has file "
                                 f"capabilities: setcap -r {st.path}"))
    elif need is None:
        if not setuid_root:
            found.append(finding(f"{name} is not setuid root (mode {_bits(st.mode)}), so it "
                                 f"cannot create nics: chown root:root {st.path}; "
                                 f"chmod 4755 {st.path}"))
    elif isinstance(need, int) and not setuid_root and not capabilities & (1 << need):
        cap = CAP_NAMES[need]
        found.append(finding(f"{name} is neither setuid root (mode {_bits(st.mode)}) nor given "
                             f"{cap}+ep, so it cannot write maps: chmod 4755 {st.path}, or "
                             f"setcap {cap}+ep {st.path} (make install CAPS=1)"))
    return found


def lint_code_path(st: Stat, what: str) -> list[Finding]:
    """LIBDIR, anything under it, and the directories above it and LIBEXECDIR: the helpers
    refuse to run code anyone but root could change (system/integrity.py)."""
    if st.mode is None:
        return [Finding(st.path, None, "install", f"{what} {st.path} is missing: reinstall "
                        "nsgate (make install, or the package)")]
    problems = []
    if st.uid != 0:
        problems.append(f"owned by uid {st.uid}")
    if st.mode & S_IFMT != S_IFLNK and st.mode & 0o022:
        problems.append(f"writable by group or others (mode {_bits(st.mode)})")
    if st.mode & S_IFMT == S_IFLNK:
        problems.append("a symbolic link")
    if not problems:
        return []
    return [Finding(st.path, None, "install",
                    f"{what} {st.path} is {' and '.join(problems)}: the helpers refuse to run "
                    f"code anyone but root could change; chown -R root:root and chmod -R go-w "
                    f"it, or reinstall")]


def lenient_reader(shown: str, st: Stat, capabilities: int, kind: str, nsgates: bool
                   ) -> str | None:
    """A program that reads /etc/sub{kind}: `shown` as `nsgate check` names it, if it is a map
    helper other than nsgate's (shadow's, as the system's newuidmap or kept as a diverted
    original) privileged enough to write other ids' maps; else None. `st` is the file the path
    resolves to, `nsgates` whether that file is an nsgate launcher."""
    if nsgates or st.mode is None or st.mode & S_IFMT != S_IFREG:
        return None
    cap = CAP_SETUID if kind == "uid" else CAP_SETGID
    if st.mode & S_ISUID and st.uid == 0:
        how = "setuid root"
    elif capabilities & (1 << cap):
        how = f"with {CAP_NAMES[cap]}"
    else:
        return None
    return f"{shown} ({how}, not nsgate's)"
