"""Where an audit goes after its run folder: experiment trackers, model cards, code
scanning and a signed attestation (docs/integrations.md).

Each integration is a reporter or a command registered through the same hooks a third
party's plugin uses (``register_reporters``, ``register_commands``); its library sits
behind one of the package's extras and is imported where it is first needed
(:func:`sing_audit.extras.require`), so a missing one exits 2 naming the extra.
"""
