"""The compiled modules: the clean-batch path of event validation, and the key index's
probing loop.

`optional=True`: where no C compiler is at hand the package still installs, and validation
runs in Python only (eventkeep/ingest/fastpath.py), and the key index in numpy, slower but
the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "eventkeep.ingest._cleanbatch",
            ["eventkeep/ingest/_cleanbatch.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        Extension(
            "eventkeep.store._keyindex",
            ["eventkeep/store/_keyindex.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
