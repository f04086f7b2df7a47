"""ATT&CK from a syslog event's program (loglm.analyst.attack.PROGRAMS) on written cases:

    python -m benchmarks.attack_programs [--without-program]

Each case is a program, the templates an alert of it would list, and the techniques an analyst would accept.
``BUILT_WITH``: the cases looked at while the table was written; ``HELD_OUT``: written after the table and
before their first run (2026-12-05).  Prints, per case, the top 3 techniques and whether one is accepted."""

from __future__ import annotations

import argparse
import json

BUILT_WITH = [
    ("useradd", ["new user: name=<*>, UID=<num>, GID=<num>, home=<path>, shell=<path>",
                 "new group: name=<*>, GID=<num>"], {"T1136.001", "T1136"}),
    ("sudo", ["<*> : TTY=<*> ; PWD=<path> ; USER=root ; COMMAND=<path>",
              "pam_unix(sudo:session): session opened for user root(uid=<num>) by <*>(uid=<num>)"], {"T1548", "T1548.003"}),
    ("CRON", ["(root) CMD (<path> | <path>)", "(root) REPLACE (root)"], {"T1053", "T1053.003"}),
    ("sshd", ["Accepted publickey for root from <ip> port <num> ssh2: RSA SHA256:<*>"], {"T1021.004", "T1021"}),
]
HELD_OUT = [
    ("groupadd", ["group added to /etc/group: name=<*>, GID=<num>", "new group: name=<*>, GID=<num>"],
     {"T1136.001", "T1136", "T1098.007", "T1098"}),
    ("passwd", ["pam_unix(passwd:chauthtok): password changed for <*>"], {"T1098", "T1531"}),
    ("crontab", ["(<*>) BEGIN EDIT (<*>)", "(<*>) REPLACE (<*>)", "(<*>) END EDIT (<*>)"], {"T1053.003", "T1053"}),
    ("usermod", ["add <*> to group <*>", "add <*> to shadow group <*>"], {"T1098", "T1098.007"}),
    ("pkexec", ["<*>: Executing command [USER=root] [TTY=unknown] [CWD=<path>] [COMMAND=<path>]"], {"T1548", "T1548.004"}),
    ("dropbear", ["Password auth succeeded for <*> from <ip>:<num>"], {"T1021.004", "T1021", "T1078"}),
    ("postfix/smtpd", ["connect from unknown[<ip>]", "lost connection after AUTH from unknown[<ip>]"],
     {"T1071.003", "T1114", "T1110"}),
    ("modprobe", ["FATAL: Module <*> not found in directory <path>"], {"T1547.006"}),
]


def alert(program: str, templates: list[str], with_program: bool = True) -> dict:
    """An alert as detection writes it for these events (templates shown as ``program: message``)."""
    return {"n_events": 5, "surprising_events": [
        {"template": f"{program}: {t}", **({"program": program} if with_program else {})} for t in templates]}


def measure(cases, with_program: bool = True) -> dict:
    from loglm.analyst.attack import by_evidence

    rows = {}
    for program, templates, accepted in cases:
        top = [t["id"] for t in by_evidence(alert(program, templates, with_program))]
        rows[program] = {"top3": top, "hit": bool(set(top) & accepted)}
    return {"hits": sum(r["hit"] for r in rows.values()), "cases": len(rows), "rows": rows}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--without-program", action="store_true", help="the same templates without the program field")
    a = ap.parse_args(argv)
    out = {name: measure(cases, not a.without_program) for name, cases in (("built_with", BUILT_WITH),
                                                                           ("held_out", HELD_OUT))}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
