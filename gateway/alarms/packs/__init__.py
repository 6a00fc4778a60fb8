"""Rule packs shipped with the gateway: ``NAME.yaml`` here is ``rules_files: ["pack:NAME"]``
(read with importlib.resources, so packs work from an installed wheel). Each file holds
one key, ``rules:``, like any rules file (docs/alarms.md)."""
