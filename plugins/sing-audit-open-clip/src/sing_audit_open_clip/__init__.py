"""sing-audit-open-clip: an open_clip model as the text/image target (``open_clip``).

A plugin distribution like any third party's: its entry point in the ``sing_audit`` group
names :mod:`sing_audit_open_clip.target`, whose ``@hookimpl`` registers the target. It
imports only the core ``sing_audit`` package.
"""
