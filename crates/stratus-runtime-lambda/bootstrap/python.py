# Stratus bootstrap for `runtime = "python"`: imports the handler named by _HANDLER from
# LAMBDA_TASK_ROOT, then loops on the Lambda Runtime API at AWS_LAMBDA_RUNTIME_API (next ->
# handler -> response/error). The handler is imported before the first `next`, so the platform
# sees a missing module, a missing function or a syntax error as a failed start (init/error).
import asyncio
import http.client
import importlib
import inspect
import json
import os
import sys
import time
import traceback

API = os.environ["AWS_LAMBDA_RUNTIME_API"]
ROOT = os.environ.get("LAMBDA_TASK_ROOT") or os.getcwd()
HANDLER = os.environ.get("_HANDLER", "")
_conn = None


def call(method, path, body=None, headers=None):
    """One request on a kept-alive connection; reconnects once if it went stale."""
    global _conn
    for attempt in (0, 1):
        if _conn is None:
            _conn = http.client.HTTPConnection(API)
        try:
            _conn.request(method, "/2018-06-01/runtime/" + path, body=body, headers=headers or {})
            resp = _conn.getresponse()
            return resp.status, resp.headers, resp.read()
        except (http.client.HTTPException, ConnectionError, OSError):
            _conn = None
            if attempt:
                raise


class Tagged:
    """Every line a handler prints carries the id of the invocation it belongs to."""

    def __init__(self, stream):
        self.stream = stream
        self.current = None
        self.pending = ""

    def write(self, text):
        self.pending += text
        while "\n" in self.pending:
            line, self.pending = self.pending.split("\n", 1)
            self.stream.write((self.current + "\t" if self.current else "") + line + "\n")
        self.stream.flush()
        return len(text)

    def flush(self):
        if self.pending:
            self.write("\n")
        self.stream.flush()

    def __getattr__(self, name):
        return getattr(self.stream, name)


OUT, ERR = Tagged(sys.stdout), Tagged(sys.stderr)
sys.stdout, sys.stderr = OUT, ERR


def error_body(e, error_type=None):
    return json.dumps(
        {
            "errorType": error_type or type(e).__name__,
            "errorMessage": str(e),
            "stackTrace": traceback.format_exception(type(e), e, e.__traceback__),
        }
    )


class Context:
    def __init__(self, headers):
        self.aws_request_id = headers.get("Lambda-Runtime-Aws-Request-Id")
        self.invoked_function_arn = headers.get("Lambda-Runtime-Invoked-Function-Arn")
        self.function_name = os.environ.get("AWS_LAMBDA_FUNCTION_NAME")
        self.function_version = os.environ.get("AWS_LAMBDA_FUNCTION_VERSION")
        self.memory_limit_in_mb = os.environ.get("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        self.log_group_name = os.environ.get("AWS_LAMBDA_LOG_GROUP_NAME")
        self.log_stream_name = os.environ.get("AWS_LAMBDA_LOG_STREAM_NAME")
        self._deadline = int(headers.get("Lambda-Runtime-Deadline-Ms") or 0)
        cc = headers.get("Lambda-Runtime-Client-Context")
        self.client_context = json.loads(cc) if cc else None
        ci = headers.get("Lambda-Runtime-Cognito-Identity")
        self.identity = json.loads(ci) if ci else None

    def get_remaining_time_in_millis(self):
        return max(0, self._deadline - int(time.time() * 1000))


def load_handler():
    module_name, _, func = HANDLER.rpartition(".")
    if not module_name or not func:
        return None, (ValueError(f'bad handler "{HANDLER}": write module.function, like main.handler'), "Runtime.MalformedHandlerName")
    sys.path.insert(0, ROOT)
    module_path = module_name.replace("/", ".")
    try:
        module = importlib.import_module(module_path)
    except ModuleNotFoundError as e:
        if e.name and module_path.split(".")[0] == e.name.split(".")[0]:
            return None, (ModuleNotFoundError(f'cannot find module "{module_name}": no {module_name}.py in the function folder'), "Runtime.ImportModuleError")
        return None, (e, "Runtime.ImportModuleError")
    except SyntaxError as e:
        return None, (e, "Runtime.UserCodeSyntaxError")
    except Exception as e:  # noqa: BLE001 - any failure at import time is an init error
        return None, (e, "Runtime.ImportModuleError")
    fn = getattr(module, func, None)
    if not callable(fn):
        return None, (AttributeError(f'{module_name}.py has no function "{func}" (handler "{HANDLER}")'), "Runtime.HandlerNotFound")
    return fn, None


def main():
    fn, failure = load_handler()
    if failure:
        e, kind = failure
        traceback.print_exception(type(e), e, e.__traceback__)
        ERR.flush()
        try:
            call("POST", "init/error", error_body(e, kind), {"Lambda-Runtime-Function-Error-Type": kind})
        finally:
            sys.exit(1)
    loop = None
    while True:
        status, headers, body = call("GET", "invocation/next")
        if status != 200:
            sys.exit(0)
        rid = headers.get("Lambda-Runtime-Aws-Request-Id")
        if headers.get("Lambda-Runtime-Trace-Id"):
            os.environ["_X_AMZN_TRACE_ID"] = headers["Lambda-Runtime-Trace-Id"]
        OUT.current = ERR.current = rid
        try:
            event = json.loads(body)
            result = fn(event, Context(headers))
            if inspect.isawaitable(result):
                loop = loop or asyncio.new_event_loop()
                result = loop.run_until_complete(result)
            try:
                text = json.dumps(result)
            except (TypeError, ValueError) as e:
                raise TypeError(f"the handler's result is not serialisable to JSON: {e}") from None
            OUT.flush()
            ERR.flush()
            call("POST", f"invocation/{rid}/response", text, {"Content-Type": "application/json"})
        except Exception as e:  # noqa: BLE001 - every handler failure is reported, not fatal
            OUT.flush()
            ERR.flush()
            kind = "Runtime.MarshalError" if "not serialisable to JSON" in str(e) else type(e).__name__
            call("POST", f"invocation/{rid}/error", error_body(e, kind), {"Lambda-Runtime-Function-Error-Type": kind})
        OUT.current = ERR.current = None


if __name__ == "__main__":
    main()
