"""The alarm engine: rules over readings, ISA-18.2 alarm lifecycle, a durable journal."""
