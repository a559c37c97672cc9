"""Running ``tempo`` in-process for tests, as a shell would: stdin given, stdout and stderr captured."""

from __future__ import annotations

import io
import sys
from dataclasses import dataclass

from tempo_cli.cli import main


@dataclass
class Run:
    code: int
    out: bytes  # stdout, as bytes: paths, or a latent file written to '-'
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.decode().splitlines()


def tempo(*args, stdin: bytes = b"") -> Run:
    """``tempo ARGS`` in this process, as a shell runs it: ``stdin`` on stdin, stdout and stderr captured."""
    out, err = io.BytesIO(), io.BytesIO()
    streams = (io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8"),
               io.TextIOWrapper(out, encoding="utf-8", write_through=True),
               io.TextIOWrapper(err, encoding="utf-8", write_through=True))
    saved = sys.stdin, sys.stdout, sys.stderr
    sys.stdin, sys.stdout, sys.stderr = streams
    try:
        code = main([str(a) for a in args])
    finally:
        sys.stdin, sys.stdout, sys.stderr = saved
        for stream in streams:
            stream.flush()
            stream.detach()
    return Run(code, out.getvalue(), err.getvalue().decode())
