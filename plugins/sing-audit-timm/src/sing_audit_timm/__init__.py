"""sing-audit-timm: timm image classifiers (``timm``) and DINO / DINOv2 ViTs with their
published linear heads (``dino_vit``) as sing-audit backbones.

A plugin distribution like any third party's: its entry points in the ``sing_audit``
group name the modules :mod:`sing_audit_timm.backbone` and :mod:`sing_audit_timm.dino_vit`,
whose ``@hookimpl`` functions register the components. It imports only the core
``sing_audit`` package.
"""
