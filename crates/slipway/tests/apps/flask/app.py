import os

from flask import Flask

app = Flask(__name__)


@app.route("/")
def index():
    return f"{os.environ.get('GREETING', 'Hello')} from Flask on slipway\n"
