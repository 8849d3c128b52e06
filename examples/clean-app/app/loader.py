"""Loading request bodies with safe parsers."""

import json

import yaml


def load_settings(text: str) -> object:
    return yaml.safe_load(text)


def load_session(body: bytes) -> object:
    return json.loads(body)
