"""What a Spark or Delta error says, read from its condition, never from its rendered message.

A ``SparkThrowable`` carries its condition and message parameters; :func:`spark_condition`
reads those (as PySpark's ``getCondition()`` and ``getMessageParameters()`` do), down the JVM
exception's causes. Delta's Python API raises py4j's ``Py4JJavaError`` (its calls are not
wrapped into PySpark's exceptions); PySpark's own calls raise a ``CapturedException``: both
are read.

Delta 4.4 on Spark 4.2 cannot even build its own errors: Spark's reader does not find Delta's
error conditions, so where Delta raises ``DELTA_…`` the JVM throws ``INTERNAL_ERROR`` with the
message ``Cannot find main error class 'DELTA_…'``, and the parameters are lost. The line then
names the Delta condition and its message template from Delta's own
``error/delta-error-classes.json`` (in the pinned JAR), placeholders as they are.
"""

from __future__ import annotations

import functools
import json
import re
import zipfile
from typing import Any

from cdc.errors import JarsMissingError
from cdc.runtime.jvm import classpath

# py4j and pyspark are imported where a JVM error is examined: a process without a session never
# needs them.

__all__ = ["spark_condition"]

_UNFOUND = re.compile(r"Cannot find main error class '([A-Z0-9_]+)'")

_MAX_PARAMETER = 200
"""Characters of one message parameter kept in the line (an expression can be long)."""
_MAX_DEPTH = 20


def spark_condition(exc: BaseException) -> str | None:
    """``CONDITION: name=value, ...`` of the first JVM error in ``exc``'s causes that has one.

    Args:
        exc: a ``Py4JJavaError`` or a PySpark ``CapturedException`` (or an exception caused
            by one).

    Returns:
        The condition and its parameters, or None when no error in the chain is a
        ``SparkThrowable`` (or the JVM cannot be asked).
    """
    current: BaseException | None = exc
    for _ in range(_MAX_DEPTH):
        if current is None:
            return None
        throwable = getattr(current, "java_exception", None) or getattr(current, "_origin", None)
        if throwable is not None:
            return _from_jvm(throwable)
        current = current.__cause__
    return None


def _from_jvm(throwable: Any) -> str | None:
    try:
        from py4j.java_gateway import is_instance_of
        from pyspark import SparkContext

        gateway, jvm = SparkContext._gateway, SparkContext._jvm
        if gateway is None or jvm is None:
            return None
        utils = jvm.PythonErrorUtils
        for _ in range(_MAX_DEPTH):
            if throwable is None:
                return None
            if is_instance_of(gateway, throwable, "org.apache.spark.SparkThrowable"):
                condition = utils.getCondition(throwable)
                parameters = dict(utils.getMessageParameters(throwable) or {})
                unfound = _UNFOUND.search(str(parameters.get("message", "")))
                if condition == "INTERNAL_ERROR" and unfound:
                    name = unfound.group(1)
                    template = _delta_templates().get(name)
                    return f"{name}: {template}" if template else name
                if condition and condition != "INTERNAL_ERROR":
                    return _line(str(condition), parameters)
            throwable = throwable.getCause()
    except Exception:  # the JVM is gone, or the object is not one of its exceptions
        return None
    return None


def _line(condition: str, parameters: dict[Any, Any]) -> str:
    if not parameters:
        return condition
    shown = ", ".join(f"{name}={_short(str(value))}" for name, value in sorted(parameters.items()))
    return f"{condition}: {shown}"


def _short(value: str) -> str:
    value = " ".join(value.split())
    return value if len(value) <= _MAX_PARAMETER else value[: _MAX_PARAMETER - 1] + "…"


@functools.cache
def _delta_templates() -> dict[str, str]:
    """Delta's error conditions and their message templates, from the pinned delta-spark JAR
    (empty when it cannot be read)."""
    try:
        jars = [jar for jar in classpath("spark") if jar.name.startswith("delta-spark")]
    except JarsMissingError:
        return {}
    for jar in jars:
        try:
            with zipfile.ZipFile(jar) as archive:
                found = json.loads(archive.read("error/delta-error-classes.json"))
        except (OSError, KeyError, ValueError, zipfile.BadZipFile):
            continue
        return {
            str(name): " ".join(" ".join(entry.get("message", [])).split())
            for name, entry in found.items()
            if isinstance(entry, dict)
        }
    return {}
