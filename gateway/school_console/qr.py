"""QR codes as small inline SVG: one path of horizontal runs (no script, no style)."""

from __future__ import annotations

import qrcode
from markupsafe import Markup, escape

BORDER = 2


def qr_svg(data: str, label: str, size_mm: int = 40) -> Markup:
    """An SVG image of ``data``'s QR code (error correction M), titled ``label``."""
    code = qrcode.QRCode(border=BORDER, error_correction=qrcode.constants.ERROR_CORRECT_M)
    code.add_data(data)
    code.make(fit=True)
    matrix = code.get_matrix()
    parts = []
    for y, row in enumerate(matrix):
        x = 0
        while x < len(row):
            if row[x]:
                start = x
                while x < len(row) and row[x]:
                    x += 1
                parts.append(f"M{start} {y}h{x - start}v1h{start - x}z")
            else:
                x += 1
    n = len(matrix)
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {n} {n}" '
        f'width="{size_mm}mm" height="{size_mm}mm" role="img" class="qr" '
        f'shape-rendering="crispEdges"><title>{escape(label)}</title>'
        f'<rect width="{n}" height="{n}" fill="#fff"/>'
        f'<path fill="#000" d="{"".join(parts)}"/></svg>'
    )
