import os

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def index():
    return jsonify(message="hello from flask", version=os.environ.get("STRATUS_VERSION"))


@app.post("/echo")
def echo():
    return jsonify(received=request.get_json(silent=True))


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(os.environ["PORT"]))
