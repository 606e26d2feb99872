"""Run inside .venv-axolotl: validate axolotl configs as `axolotl train` does, before any model
loads, and print one JSON object {case name: "ok" or the plugin's error line}.

Usage: python axolotl_check_configs.py CASES.json, where CASES.json maps a case name to a full
axolotl config (a mapping). Cases whose config sets "model_config_type" instead run the plugin's
pre_model_load hook on that config (the model type axolotl reads from the model's config).
"""

import json
import sys

from axolotl.cli.config import load_cfg
from axolotl.integrations.base import PluginManager
from axolotl.utils.dict import DictDefault

from infosft.integrations.axolotl import InfoSFTPlugin


def outcome(config: dict) -> str:
    # One process validates every case: forget the plugins the previous case registered.
    PluginManager.get_instance().plugins.clear()
    try:
        if "model_config_type" in config:
            InfoSFTPlugin().pre_model_load(DictDefault(config))
        else:
            load_cfg(DictDefault(config))
    except Exception as err:
        lines = [line for line in str(err).splitlines() if "infosft" in line.lower()]
        return lines[0].strip() if lines else f"{type(err).__name__}: {err}"
    return "ok"


if __name__ == "__main__":
    with open(sys.argv[1], encoding="utf-8") as file:
        cases = json.load(file)
    print(json.dumps({name: outcome(config) for name, config in cases.items()}))
