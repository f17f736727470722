const express = require("express");

const app = express();
app.use(express.json());

app.get("/", (req, res) => res.json({ message: "hello from express", version: process.env.STRATUS_VERSION }));
app.get("/api/express/items/:id", (req, res) => res.json({ id: req.params.id }));
app.post("/echo", (req, res) => res.json({ received: req.body }));

const port = Number(process.env.PORT);
app.listen(port, "127.0.0.1", () => console.log(`express listening on ${port}`));
