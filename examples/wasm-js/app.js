// A wasi:http function in JavaScript: componentize-js's engine (StarlingMonkey) turns the
// `fetch` event into the component's wasi:http/incoming-handler export.
addEventListener("fetch", (event) =>
  event.respondWith(
    new Response(JSON.stringify({ message: "hello from js", path: new URL(event.request.url).pathname }), {
      headers: { "content-type": "application/json" },
    }),
  ),
);
