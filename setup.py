"""The one compiled module: the clean-batch path of event validation.

`optional=True`: where no C compiler is at hand the package still installs, and validation
runs in Python only (eventkeep/ingest/fastpath.py), slower but the same.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "eventkeep.ingest._cleanbatch",
            ["eventkeep/ingest/_cleanbatch.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
