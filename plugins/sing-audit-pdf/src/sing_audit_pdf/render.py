"""The PDF report: the HTML report's sections in their print styling, through weasyprint.

The PDF never reads files or the network: every picture is a ``data:`` URI and the URL
fetcher serves nothing else.
"""

from __future__ import annotations

from pathlib import Path

from sing_audit.report import ReportRenderError, render_report

__all__ = ["load_weasyprint", "render_pdf"]


def load_weasyprint():
    """Import weasyprint, or raise :class:`ReportRenderError` saying what to install.

    Importing weasyprint sets ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES = True`` for the whole
    process, which would let a truncated dataset image be decoded (its missing part filled in)
    and audited as if whole. The previous value is restored right after the import: the
    PDF embeds only the report's own complete JPEG/PNG pictures, so it needs no leniency.
    """
    from PIL import ImageFile

    previous = ImageFile.LOAD_TRUNCATED_IMAGES
    try:
        import weasyprint
    except ImportError as exc:
        raise ReportRenderError(
            f"the pdf report needs the weasyprint package, which cannot be imported ({exc}); "
            "install it (pip install weasyprint) or leave pdf out of report.formats"
        ) from exc
    except OSError as exc:
        raise ReportRenderError(
            "the pdf report needs weasyprint's system libraries (Pango, with HarfBuzz and fontconfig), which "
            f"cannot be loaded: {exc}. Install Pango (Debian/Ubuntu: apt-get install libpango-1.0-0 "
            "libpangoft2-1.0-0 libharfbuzz0b; macOS: brew install pango) or leave pdf out of report.formats"
        ) from exc
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = previous
    return weasyprint


def _fetcher(weasyprint):
    """A URL fetcher that serves only ``data:`` URIs: the PDF never reads files or the network."""
    factory = getattr(weasyprint, "URLFetcher", None)
    if factory is not None:
        try:
            return factory(allowed_protocols={"data"})
        except TypeError:  # pragma: no cover - older weasyprint
            pass
    from weasyprint import default_url_fetcher  # pragma: no cover - older weasyprint

    def fetch(url, *args, **kwargs):  # pragma: no cover - older weasyprint
        if not str(url).startswith("data:"):
            raise ValueError(f"the report embeds everything; refusing to fetch {url}")
        return default_url_fetcher(url, *args, **kwargs)

    return fetch  # pragma: no cover


def render_pdf(result, run_dir: Path | None = None, *, registry=None, sections=None) -> bytes:
    """The report as PDF bytes (weasyprint, print medium, same templates)."""
    weasyprint = load_weasyprint()
    html = render_report(result, run_dir, medium="print", registry=registry, sections=sections)
    try:
        document = weasyprint.HTML(string=html, url_fetcher=_fetcher(weasyprint))
        return document.write_pdf()
    except OSError as exc:
        raise ReportRenderError(f"weasyprint failed to write the pdf report: {exc}") from exc
