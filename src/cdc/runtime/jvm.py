"""The JVM side: JARs pinned in ``jvm/pom.xml``, fetched once by Maven at install time.

Each Maven profile of the POM is one classpath folder under :func:`jars_dir`:

* ``spark``: added to every SparkSession with ``spark.jars`` (Delta, Spark's Kafka source);
* ``kafka``: the Apache Kafka broker that ``cdc broker``, the demo and the tests run;
* ``s3``: the S3A filesystem (hadoop-aws), on sessions of a lake on S3;
* ``lineage``: the OpenLineage Spark agent, on sessions of runs that report lineage
  (:mod:`cdc.lineage.spark_agent`);
* ``registry``: Apicurio Registry (a Confluent-compatible schema registry) for the tests of
  the HTTP registry client; not part of the service's runtime.

``python -m cdc.runtime.jvm install`` (run by ``make install`` and the Dockerfile) asks Maven to
copy each profile's JARs; a query start or a broker start only reads the folders, never downloads.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cdc.errors import CdcError, JarsMissingError

__all__ = ["JARS_ENV", "PROFILES", "classpath", "install", "jars_dir", "main"]

JARS_ENV = "CDC_JARS_DIR"
"""Environment variable naming the JAR folder (default ``<sys.prefix>/share/cdc-service/jars``)."""

PROFILES = ("spark", "kafka")
"""The POM profiles that every install fetches."""

_STAMP = ".pom-sha256"
_DEFAULT_POM = Path(__file__).resolve().parents[3] / "jvm" / "pom.xml"  # src/cdc/runtime/


def jars_dir() -> Path:
    """The folder holding one sub-folder of JARs per POM profile."""
    configured = os.environ.get(JARS_ENV)
    if configured:
        return Path(configured)
    return Path(sys.prefix) / "share" / "cdc-service" / "jars"


def classpath(profile: str) -> list[Path]:
    """The JARs of one profile, sorted by name.

    Args:
        profile: a POM profile, e.g. ``spark`` or ``kafka``.

    Returns:
        Absolute paths of the profile's JARs.

    Raises:
        JarsMissingError: the profile's folder is missing or empty.
    """
    folder = jars_dir() / profile
    jars = sorted(folder.glob("*.jar")) if folder.is_dir() else []
    if not jars:
        raise JarsMissingError(
            f"no {profile} JARs in {folder}: run `make install`"
            " (or `python -m cdc.runtime.jvm install`),"
            f" or set {JARS_ENV} to the folder that holds them"
        )
    return [jar.resolve() for jar in jars]


def optional_classpath(profile: str) -> list[Path]:
    """The JARs of a profile that only some deployments install (``s3``, ``lineage``); empty
    when absent."""
    folder = jars_dir() / profile
    return sorted(jar.resolve() for jar in folder.glob("*.jar")) if folder.is_dir() else []


def _artifacts(folder: Path) -> list[Path]:
    """What Maven copied: JARs, or an application archive (the registry's ``.tar.gz``)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.suffix in (".jar", ".gz", ".zip"))


def _pom_digest(pom: Path) -> str:
    return hashlib.sha256(pom.read_bytes()).hexdigest()


def install(
    pom: Path = _DEFAULT_POM,
    dest: Path | None = None,
    profiles: Sequence[str] = PROFILES,
    *,
    offline: bool = False,
) -> list[Path]:
    """Fetch each profile's JARs with Maven into ``dest/<profile>`` (skipped when current).

    A profile folder is replaced whole, and only after Maven succeeded, so an interrupted
    install never leaves a half-filled classpath behind. A stamp with the POM's digest makes a
    second install with the same POM a no-op.

    Args:
        pom: the project's ``pom.xml``.
        dest: the JAR folder; defaults to :func:`jars_dir`.
        profiles: the profiles to fetch.
        offline: pass ``-o`` to Maven (use the local repository only).

    Returns:
        The profile folders that were (re)filled.

    Raises:
        CdcError: Maven is missing or failed (its last lines are in the message).
    """
    root = dest or jars_dir()
    mvn = shutil.which("mvn")
    if mvn is None:
        raise CdcError("Maven (`mvn`) is not on PATH: install Maven 3 to fetch the JVM JARs")
    digest = _pom_digest(pom)
    filled: list[Path] = []
    for profile in profiles:
        target = root / profile
        stamp = target / _STAMP
        if stamp.exists() and stamp.read_text().strip() == digest and _artifacts(target):
            continue
        root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{profile}-", dir=root))
        command = [
            mvn,
            "-B",
            "-q",
            *(["-o"] if offline else []),
            "-f",
            str(pom),
            "-P",
            profile,
            "dependency:copy-dependencies",
            f"-DoutputDirectory={staging}",
            "-DincludeScope=runtime",
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not _artifacts(staging):
            shutil.rmtree(staging, ignore_errors=True)
            tail = " | ".join((done.stdout + done.stderr).strip().splitlines()[-5:])
            raise CdcError(f"Maven could not fetch the {profile} JARs from {pom}: {tail}")
        (staging / _STAMP).write_text(digest + "\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        filled.append(target)
    return filled


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m cdc.runtime.jvm install [--pom P] [--dest D] [--profile NAME ...]``."""
    parser = argparse.ArgumentParser(prog="python -m cdc.runtime.jvm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inst = sub.add_parser("install", help="fetch the pinned JARs with Maven")
    inst.add_argument("--pom", type=Path, default=_DEFAULT_POM)
    inst.add_argument("--dest", type=Path, default=None, help=f"default: ${JARS_ENV} or prefix")
    inst.add_argument("--profile", action="append", dest="profiles", help="default: spark, kafka")
    inst.add_argument("--offline", action="store_true")
    sub.add_parser("path", help="print the JAR folder")
    args = parser.parse_args(argv)
    if args.command == "path":
        print(jars_dir())
        return 0
    try:
        filled = install(args.pom, args.dest, args.profiles or PROFILES, offline=args.offline)
    except CdcError as exc:
        print(f"cdc.runtime.jvm: {exc}", file=sys.stderr)
        return 2
    root = args.dest or jars_dir()
    for profile in args.profiles or PROFILES:
        count = len(_artifacts(root / profile))
        state = "fetched" if root / profile in filled else "up to date"
        print(f"jars: {profile}: {count} artifacts in {root / profile} ({state})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
