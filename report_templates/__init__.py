"""The report's jinja2 templates: the document around the sections and the built-in
sections' bodies. Installed as ``sing_audit.report_templates`` (package data); a user's
own folder (``report: {templates: DIR}``) is searched first and may override or extend
any of them."""
