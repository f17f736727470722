// Stratus bootstrap for `runtime = "node"`: loads the handler named by _HANDLER from
// LAMBDA_TASK_ROOT, then loops on the Lambda Runtime API at AWS_LAMBDA_RUNTIME_API (next ->
// handler -> response/error). The handler is loaded before the first `next`, so the platform
// sees a missing file, a missing export or a syntax error as a failed start (init/error).
"use strict";

const http = require("http");
const path = require("path");
const fs = require("fs");
const util = require("util");
const { pathToFileURL } = require("url");

const [apiHost, apiPort] = process.env.AWS_LAMBDA_RUNTIME_API.split(":");
const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
const root = process.env.LAMBDA_TASK_ROOT || process.cwd();
const handlerName = process.env._HANDLER || "";

function call(method, urlPath, body, headers) {
  return new Promise((resolve, reject) => {
    const req = http.request(
      { host: apiHost, port: Number(apiPort), path: "/2018-06-01/runtime/" + urlPath, method, agent, headers: headers || {} },
      (res) => {
        const chunks = [];
        res.on("data", (c) => chunks.push(c));
        res.on("end", () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(chunks) }));
        res.on("error", reject);
      },
    );
    req.on("error", reject);
    if (body !== undefined) req.write(body);
    req.end();
  });
}

function errorBody(err) {
  const e = err instanceof Error ? err : new Error(typeof err === "string" ? err : util.inspect(err));
  return JSON.stringify({
    errorType: (err && err.name) || e.name || "Error",
    errorMessage: e.message,
    trace: String(e.stack || "").split("\n"),
  });
}

// Every line a handler writes carries the id of the invocation it belongs to, so the platform's
// log has it even though output is read asynchronously.
let currentId = null;
function tagged(stream, level) {
  return (...args) => {
    const text = util.format(...args);
    const prefix = currentId ? `${currentId}\t${level}\t` : `${level}\t`;
    stream.write(text.split("\n").map((l) => prefix + l).join("\n") + "\n");
  };
}
console.log = tagged(process.stdout, "INFO");
console.info = tagged(process.stdout, "INFO");
console.debug = tagged(process.stdout, "DEBUG");
console.warn = tagged(process.stderr, "WARN");
console.error = tagged(process.stderr, "ERROR");

async function loadHandler() {
  const dot = handlerName.lastIndexOf(".");
  if (dot <= 0) throw Object.assign(new Error(`bad handler "${handlerName}": write module.export, like index.handler`), { name: "Runtime.MalformedHandlerName" });
  const modulePath = handlerName.slice(0, dot);
  const exportName = handlerName.slice(dot + 1);
  const base = path.resolve(root, modulePath);
  const file = [".js", ".mjs", ".cjs"].map((ext) => base + ext).find((f) => fs.existsSync(f));
  if (!file) {
    throw Object.assign(new Error(`cannot find module "${modulePath}": no ${modulePath}.js, .mjs or .cjs in the function folder`), { name: "Runtime.ImportModuleError" });
  }
  let mod;
  try {
    mod = file.endsWith(".mjs") ? await import(pathToFileURL(file).href) : require(file);
  } catch (e) {
    if (e && e.code === "ERR_REQUIRE_ESM") mod = await import(pathToFileURL(file).href);
    else {
      if (e instanceof SyntaxError) e.message = `${path.basename(file)}: ${e.message}`;
      throw e;
    }
  }
  const fn = mod[exportName] !== undefined ? mod[exportName] : mod.default && mod.default[exportName];
  if (typeof fn !== "function") {
    throw Object.assign(new Error(`${path.basename(file)} does not export a function "${exportName}" (handler "${handlerName}")`), { name: "Runtime.HandlerNotFound" });
  }
  return fn;
}

function invokeHandler(fn, event, context) {
  return new Promise((resolve, reject) => {
    let done = false;
    const callback = (err, result) => {
      if (done) return;
      done = true;
      err ? reject(err) : resolve(result);
    };
    context.done = callback;
    context.succeed = (r) => callback(null, r);
    context.fail = (e) => callback(e);
    try {
      const out = fn(event, context, callback);
      if (out && typeof out.then === "function") out.then((r) => callback(null, r), callback);
      else if (fn.length < 3) callback(null, out);
    } catch (e) {
      callback(e);
    }
  });
}

async function main() {
  let fn;
  try {
    fn = await loadHandler();
  } catch (e) {
    console.error(e && e.stack ? e.stack : String(e));
    await call("POST", "init/error", errorBody(e), { "Lambda-Runtime-Function-Error-Type": (e && e.name) || "Runtime.InitError" }).catch(() => {});
    process.exit(1);
  }
  for (;;) {
    const next = await call("GET", "invocation/next");
    if (next.status !== 200) {
      process.exit(0);
    }
    const id = next.headers["lambda-runtime-aws-request-id"];
    const deadline = Number(next.headers["lambda-runtime-deadline-ms"]);
    const context = {
      awsRequestId: id,
      functionName: process.env.AWS_LAMBDA_FUNCTION_NAME,
      functionVersion: process.env.AWS_LAMBDA_FUNCTION_VERSION,
      invokedFunctionArn: next.headers["lambda-runtime-invoked-function-arn"],
      memoryLimitInMB: process.env.AWS_LAMBDA_FUNCTION_MEMORY_SIZE,
      logGroupName: process.env.AWS_LAMBDA_LOG_GROUP_NAME,
      logStreamName: process.env.AWS_LAMBDA_LOG_STREAM_NAME,
      callbackWaitsForEmptyEventLoop: true,
      getRemainingTimeInMillis: () => Math.max(0, deadline - Date.now()),
    };
    if (next.headers["lambda-runtime-client-context"]) {
      try { context.clientContext = JSON.parse(next.headers["lambda-runtime-client-context"]); } catch (_) {}
    }
    if (next.headers["lambda-runtime-trace-id"]) process.env._X_AMZN_TRACE_ID = next.headers["lambda-runtime-trace-id"];
    currentId = id;
    let reply;
    try {
      const event = JSON.parse(next.body.toString("utf8"));
      const result = await invokeHandler(fn, event, context);
      let text;
      try {
        text = JSON.stringify(result === undefined ? null : result);
      } catch (e) {
        throw Object.assign(new Error(`the handler's result is not serialisable to JSON: ${e.message}`), { name: "Runtime.MarshalError" });
      }
      reply = call("POST", `invocation/${id}/response`, text, { "Content-Type": "application/json" });
    } catch (e) {
      // The platform logs the stack (tagged with the id) from the error report.
      reply = call("POST", `invocation/${id}/error`, errorBody(e), { "Lambda-Runtime-Function-Error-Type": (e && e.name) || "Error" });
    }
    currentId = null;
    await reply;
  }
}

process.on("unhandledRejection", (e) => {
  console.error("unhandled rejection:", e && e.stack ? e.stack : e);
});

main().catch((e) => {
  process.stderr.write(`stratus bootstrap failed: ${e && e.stack ? e.stack : e}\n`);
  process.exit(1);
});
