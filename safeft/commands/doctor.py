"""`safeft doctor`: the preflight of safeft/doctor.py (compiler, venv support, disk, torch build), from the CLI."""

from __future__ import annotations


def register(sub) -> None:
    from safeft.doctor import add_arguments

    p = sub.add_parser("doctor", help="check this machine: compiler, venv support, disk, which torch build")
    add_arguments(p)
    p.set_defaults(func=_doctor)


def _doctor(args) -> int:
    from safeft.doctor import main

    return main(args)
