"""The JSON Schema of ``audit.yaml``, with every installed plugin's options
(``sing-audit schema``)."""

from __future__ import annotations

from .config import AuditConfig
from .host import Registry

__all__ = ["config_schema"]


def config_schema(registry: Registry) -> dict:
    """JSON Schema of ``audit.yaml`` with every installed plugin's options."""
    schema = AuditConfig.model_json_schema(by_alias=True)
    schema["properties"].pop("base_dir", None)
    defs = schema.setdefault("$defs", {})

    def variants(kind: str, extra: dict | None = None) -> dict:
        out = []
        for name in registry.names(kind):
            reg = registry.get(kind, name)
            model = reg.options_model
            sub = model.model_json_schema() if model is not None else {"type": "object", "properties": {}}
            for d, v in sub.pop("$defs", {}).items():
                defs.setdefault(d, v)
            props = {k: v for k, v in sub.get("properties", {}).items() if k != "base_dir"}
            props = {"plugin": {"const": name}, **(extra or {}), **props}
            out.append(
                {
                    "title": f"{kind} {name}",
                    "description": f"from {reg.package}",
                    "type": "object",
                    "properties": props,
                    "required": ["plugin", *[r for r in sub.get("required", []) if r != "base_dir"], *((extra or {}).keys())],
                    "additionalProperties": False,
                }
            )
        return {"oneOf": out} if out else {"type": "object"}

    props = schema["properties"]
    props["dataset"] = {"anyOf": [variants("dataset"), {"type": "null"}]}
    target = variants("target", None)
    for v in target.get("oneOf", []):
        v["properties"]["name"] = {"type": "string"}
    props["target"] = target
    props["targets"] = {"type": "array", "items": target}
    backbone = variants("backbone", {"name": {"type": "string"}})
    props["backbones"] = {"type": "array", "minItems": 1, "items": backbone}
    props["translator"] = variants("translator")
    props["visualizer"] = {"anyOf": [variants("visualizer"), {"type": "null"}]}
    probe = variants("probe")
    props["probes"] = {"type": "array", "items": {"anyOf": [{"enum": registry.names("probe")}, probe]}}
    formats = registry.reporters_by_format()
    report_options = {}
    for fmt, reg in sorted(formats.items()):
        model = reg.options_model
        sub = model.model_json_schema() if model is not None else {"type": "object", "properties": {}}
        for d, v in sub.pop("$defs", {}).items():
            defs.setdefault(d, v)
        sub["properties"] = {k: v for k, v in sub.get("properties", {}).items() if k != "base_dir"}
        sub["required"] = [r for r in sub.get("required", []) if r != "base_dir"]
        sub.update({"title": f"report.options.{fmt}", "description": f"from {reg.package}", "additionalProperties": False})
        report_options[fmt] = sub
    report = AuditConfig.model_fields["report"].annotation.model_json_schema(by_alias=True)
    report.pop("$defs", None)
    report["properties"]["formats"] = {"type": "array", "items": {"enum": sorted(formats)}}
    report["properties"]["options"] = {"type": "object", "properties": report_options, "additionalProperties": False}
    report["additionalProperties"] = False
    props["report"] = report
    return schema
