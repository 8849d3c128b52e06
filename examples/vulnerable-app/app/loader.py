"""Loading request bodies with unsafe deserialisers (planted issues)."""

import pickle

import yaml


def load_settings(text: str) -> object:
    return yaml.load(text, Loader=yaml.Loader)


def load_session(body: bytes) -> object:
    return pickle.loads(body)
