// A plain Node `http` server: the platform passes the port in $PORT.
const http = require("http");

const greeting = process.env.GREETING || "hello";
const server = http.createServer((req, res) => {
  if (req.url === "/healthz") {
    res.writeHead(200, { "content-type": "text/plain" });
    return res.end("ok");
  }
  const body = JSON.stringify({
    message: `${greeting} from node`,
    path: req.url,
    prefix: req.headers["x-forwarded-prefix"] || null,
    version: process.env.STRATUS_VERSION,
  });
  res.writeHead(200, { "content-type": "application/json" });
  res.end(body);
});
server.listen(Number(process.env.PORT), "127.0.0.1", () => {
  console.log(`listening on ${process.env.PORT}`);
});
process.on("SIGTERM", () => server.close(() => process.exit(0)));
