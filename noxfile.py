"""Developer sessions: `nox` runs tests (3.11-3.13, whichever are found), lint, typecheck.

`nox -s bench -- ARGS` runs the benchmarks, `nox -s scaling -- ARGS` the scaling curves (not
default sessions; both start their own throwaway PostgreSQL with .ci/start-postgres.sh).
PostgreSQL tests use PERSISTQ_TEST_PG_URL from the environment; start a throwaway
server with `source .ci/start-postgres.sh start` (stop: `bash .ci/start-postgres.sh stop`).
"""

from __future__ import annotations

import glob
import os

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.error_on_missing_interpreters = False

PYTHONS = ["3.11", "3.12", "3.13"]


def _expose_pyenv_pythons() -> None:
    """Put pyenv's interpreters on PATH so nox finds python3.X for every installed X.

    pyenv's shims only work for the versions made global/local; the real binaries are
    under $PYENV_ROOT/versions/X.Y.Z/bin.
    """
    root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    dirs = []
    for version in PYTHONS:
        found = [
            d
            for d in glob.glob(os.path.join(root, "versions", f"{version}.*", "bin"))
            if os.path.basename(os.path.dirname(d)).replace(".", "").isdigit()  # no 3.13.0t
        ]
        if found:  # highest patch release
            dirs.append(max(found, key=lambda d: [int(p) for p in d.split(os.sep)[-2].split(".")]))
    path = os.environ.get("PATH", "").split(os.pathsep)
    os.environ["PATH"] = os.pathsep.join([*(d for d in dirs if d not in path), *path])


_expose_pyenv_pythons()


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite (extra args go to pytest)."""
    session.install("-e", ".[test]")
    session.run("python", "-m", "pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check, ruff format --check, import-linter contracts."""
    session.install("-e", ".[lint]")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("lint-imports")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy (strict, configured in pyproject.toml)."""
    session.install("-e", ".[lint]")
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks (not a default session; minutes): `nox -s bench -- ARGS` runs
    `python benchmarks/run.py ARGS` (SQLite and its peers), then `python benchmarks/postgres.py
    --private-server ARGS` (PgQueuer, procrastinate, raw asyncpg), which starts a throwaway
    PostgreSQL with .ci/start-postgres.sh (fsync on) and stops it at the end. ARGS: options both
    take, e.g. `--quick` or `--repeats N`."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/run.py", *session.posargs)
    session.run("python", "benchmarks/postgres.py", "--private-server", *session.posargs)


@nox.session
def scaling(session: nox.Session) -> None:
    """How throughput grows with the work (not a default session; minutes): `nox -s scaling --
    ARGS` runs `python benchmarks/scaling.py --private-server ARGS` on SQLite and a throwaway
    PostgreSQL (e.g. `--quick`, `--only queues`, `--charts docs`)."""
    session.install("-e", ".[bench]")
    session.run("python", "benchmarks/scaling.py", "--private-server", *session.posargs)


@nox.session
def chaos(session: nox.Session) -> None:
    """The long reliability run: tests/reliability/test_chaos.py with 30 minutes of kill -9 chaos
    (at least 3,000 kills; PERSISTQ_CHAOS_SECONDS overrides the duration). Figures are printed
    (-s) and written as JSON under pytest's tmp_path; extra args go to pytest."""
    session.install("-e", ".[test]")
    seconds = os.environ.get("PERSISTQ_CHAOS_SECONDS", "1800")
    session.run(
        "python",
        "-m",
        "pytest",
        "tests/reliability/test_chaos.py",
        "-s",
        *session.posargs,
        env={"PERSISTQ_CHAOS_SECONDS": seconds},
    )


@nox.session
def soak(session: nox.Session) -> None:
    """The soak run (minutes; not in CI): `nox -s soak -- [--minutes M] [--db PATH] [--json PATH]`
    runs `python benchmarks/soak.py` (steady load at 70% of the measured maximum, 1% nacks, RSS,
    WAL, open files, claim p99, no loss, and a WAL-pinning reader). Exits 1 if a criterion fails."""
    session.install("-e", ".[test]")
    session.run("python", "benchmarks/soak.py", *session.posargs)
