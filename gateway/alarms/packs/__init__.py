"""Rule packs shipped with the gateway (``rules_files: ["pack:NAME"]``): NAME.yaml here."""
