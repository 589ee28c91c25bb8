"""Declares the Cython extension; all metadata lives in pyproject.toml.

Environment switches (habit of asyncpg/uvloop: a loud build with a debug flavour):
  FTCORE_DEBUG=1   invariant checks inside the kernels, Cython line tracing, -O0 -g
"""

import os

from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("FTCORE_DEBUG", "") not in ("", "0")

macros = [("OPENSSL_SUPPRESS_DEPRECATED", None)]  # SHA256_CTX is deprecated API, on purpose
cflags = [
    "-Wall",
    "-Wextra",
    "-Wno-unused-parameter",
    "-Wno-unused-function",
    "-Wno-missing-field-initializers",
]
directives = {"language_level": "3", "embedsignature": True}
if DEBUG:
    macros += [("FTCORE_DEBUG", "1"), ("CYTHON_TRACE_NOGIL", "1")]
    cflags += ["-O0", "-g3", "-UNDEBUG"]
    directives.update(linetrace=True, boundscheck=True, wraparound=True, initializedcheck=True)
else:
    cflags += ["-O2"]

extensions = [
    Extension(
        name,
        [source],
        libraries=["crypto"],
        define_macros=macros,
        extra_compile_args=cflags,
    )
    for name, source in (
        ("ftcore._core", "ftcore/_core.pyx"),
        ("ftcore._ingest", "ftcore/_ingest.pyx"),  # cimports _core's classes (_core.pxd)
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=directives,
        annotate=os.environ.get("FTCORE_ANNOTATE", "") not in ("", "0"),
        force=DEBUG,
    ),
)
