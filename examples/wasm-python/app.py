"""A wasi:http handler in Python, built into a component by componentize-py."""

import json
import os

from wit_world import exports
from wit_world.imports.types import (
    Fields,
    IncomingRequest,
    OutgoingBody,
    OutgoingResponse,
    ResponseOutparam,
)
from componentize_py_types import Ok


class IncomingHandler(exports.IncomingHandler):
    def handle(self, request: IncomingRequest, response_out: ResponseOutparam) -> None:
        greeting = os.environ.get("GREETING", "hello")
        body = json.dumps({"message": f"{greeting} from python"}).encode()
        response = OutgoingResponse(Fields.from_list([("content-type", b"application/json")]))
        response_body = response.body()
        ResponseOutparam.set(response_out, Ok(response))
        with response_body.write() as stream:
            stream.blocking_write_and_flush(body)
        OutgoingBody.finish(response_body, None)
