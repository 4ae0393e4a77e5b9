"""Secrets never reach disk or logs: tokens, API keys and passwords are taken out of configs and masked in text.

A secret is (1) the value of a config key named like a secret (token, *_token, *_key, secret, *password*), or
(2) the value of an environment variable named like one (HF_TOKEN, WANDB_API_KEY, *_TOKEN, *_KEY, *PASSWORD*,
*SECRET*). (Config keys naming data fields therefore end in _field, never _key.) `absorb(cfg)` moves config secrets into the environment (where the libraries that
need them look: `model.token` becomes HF_TOKEN) and replaces them by a mask in the config that is saved;
`redact(text)` masks every known secret value in text written to logs, summaries and sweep tables.
"""

from __future__ import annotations

import os
import re

from omegaconf import DictConfig, ListConfig, open_dict

MASK = "***"
_KEY = re.compile(r"(?i)((^|_)(token|key|secret)$|password|passwd)")
_ENV = re.compile(r"(?i)(token|_key$|api_key|password|passwd|secret)")
_ENV_FOR = {"model.token": "HF_TOKEN"}
_known: set[str] = set()


def is_secret_key(key: str) -> bool:
    return bool(_KEY.search(str(key)))


def values() -> set[str]:
    env = {v for k, v in os.environ.items() if _ENV.search(k) and len(v) >= 6 and k != "TUNEFORGE_FAULTS"}
    return env | _known


def redact(text: str) -> str:
    for v in sorted(values(), key=len, reverse=True):
        text = text.replace(v, MASK)
    return text


def absorb(cfg: DictConfig, prefix: str = "") -> None:
    """Register every secret-named value of `cfg`, export it to its environment variable (if it has one) and
    mask it in place."""
    for key in list(cfg.keys()):
        node, path = cfg[key], f"{prefix}{key}"
        if isinstance(node, DictConfig):
            absorb(node, f"{path}.")
        elif not isinstance(node, ListConfig) and is_secret_key(key) and node not in (None, "", MASK):
            _known.add(str(node))
            if path in _ENV_FOR:
                os.environ[_ENV_FOR[path]] = str(node)
            with open_dict(cfg):
                cfg[key] = MASK


def redact_json(obj):
    """A copy of a JSON-able object with secret-named keys masked."""
    if isinstance(obj, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact_json(v)) for k, v in obj.items()}
    if isinstance(obj, list):
        return [redact_json(v) for v in obj]
    return redact(obj) if isinstance(obj, str) else obj
