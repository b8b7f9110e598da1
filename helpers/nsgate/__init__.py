"""nsgate: privileged helpers for rootless containers (newuidmap, newgidmap, getsubids).

Layout, so a reviewer finds the lines that run as root by folder name alone:
- ``policy/``: pure parsing and deciding, bytes in, decision out; no system calls.
- ``system/``: the only code with side effects (files, /proc, credentials, syslog, cffi).
- ``cli/``: thin front ends wiring the two together and turning errors into text.
"""
