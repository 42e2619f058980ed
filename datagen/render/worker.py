"""The child render process: ``python -m datagen.render.worker FD BACKEND`` (started by RenderProcess).

Builds the backend once, says ready, then answers each ``(path, params, seed)`` on the socket FD with
``("ok", Rendered)`` or ``("error", (kind, reason, detail))``; exits when the parent closes the socket.
Exceptions travel as plain tuples: ``Rejected``/``BadInput`` keep their reason that way (pickling them would not).
"""

from __future__ import annotations

import sys
import traceback
from multiprocessing.connection import Connection

from datagen.render import RenderParams, make_backend, render_object
from datagen.units import BadInput, Rejected


def serve(conn: Connection, backend_name: str) -> None:
    backend = make_backend(backend_name)
    conn.send("ready")
    while True:
        try:
            path, params, seed = conn.recv()
        except EOFError:
            break
        try:
            reply = ("ok", render_object(path, RenderParams.model_validate(params), seed, backend))
        except Rejected as e:
            reply = ("error", ("rejected", e.reason, e.detail))
        except BadInput as e:
            reply = ("error", ("failed", e.reason, e.detail))
        except Exception as e:  # noqa: BLE001 — a renderer bug fails this object, with its traceback, not the worker
            tail = "".join(traceback.format_exception(e)[-6:])
            reply = ("error", ("failed", type(e).__name__, f"{path}: {e}\n{tail}"[-4000:]))
        sys.stdout.flush()
        conn.send(reply)
    backend.close()


if __name__ == "__main__":
    serve(Connection(int(sys.argv[1])), sys.argv[2])
