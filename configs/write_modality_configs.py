"""Write configs/<modality>.yaml for every registered modality from its defaults (the AVControl paper's Table 5).

    PYTHONPATH=. python configs/write_modality_configs.py

tests/test_config.py checks that each shipped file loads and matches its modality.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from avctl.config import modality_config
from avctl.modalities.base import all_modalities

HEADER = """\
# avctl config for {name}: {description}
# The AVControl paper's defaults (Table 5). Format: docs/configs.md. Flags override any key.
#   avctl prepare {name} videos/ --config configs/{name}.yaml
#   avctl train {name} --config configs/{name}.yaml --model <weights>
"""


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, lists on one line."""


_Dumper.add_representer(list, lambda d, v: d.represent_sequence("tag:yaml.org,2002:seq", v, flow_style=True))


def main() -> None:
    here = Path(__file__).parent
    for mod in all_modalities().values():
        body = yaml.dump(modality_config(mod), Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=120)
        (here / f"{mod.name}.yaml").write_text(HEADER.format(name=mod.name, description=mod.description) + body)


if __name__ == "__main__":
    main()
