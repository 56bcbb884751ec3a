"""sing-audit-huggingface: Hugging Face models for sing-audit — ``transformers`` image
classifiers as backbones, Karlo's CLIP as a target (``karlo``) and its unCLIP decoder as a
visualizer (``unclip``).

A plugin distribution like any third party's: its entry points in the ``sing_audit``
group name the modules :mod:`~sing_audit_huggingface.transformers_backbone`,
:mod:`~sing_audit_huggingface.karlo` and :mod:`~sing_audit_huggingface.unclip`, whose
``@hookimpl`` functions register the components. It imports only the core ``sing_audit``
package.
"""
