"""The attack suite (issue 4): every general hardening class of security-cases.md part C, run
against each installed helper as an unprivileged user would, with assertions on the outcome."""
