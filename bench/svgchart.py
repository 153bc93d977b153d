"""A hand-written SVG bar chart of the ours/peer ratios (no matplotlib).

One horizontal bar per metric that has a ratio, on a log scale centred on
1.0 (equal).  Bars are green where the issue's target is met, red where
it is not, grey where there is no target.  The target is a black tick.
"""
import math
from xml.sax.saxutils import escape

WIDTH = 960
LABEL_W = 360
ROW_H = 26
TOP = 56
LO, HI = 0.01, 10.0      # ratio range of the axis (log scale)


def _x(ratio):
	r = min(max(ratio, LO), HI)
	span = math.log10(HI) - math.log10(LO)
	return LABEL_W + (math.log10(r) - math.log10(LO)) / span * (WIDTH - LABEL_W - 60)


def ratios_svg(rows, title):
	bars = [r for r in rows if "ratio" in r]
	if not bars:
		return None
	height = TOP + ROW_H * len(bars) + 50
	out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" '
	       'font-family="sans-serif" font-size="12">' % (WIDTH, height),
	       '<rect width="100%" height="100%" fill="white"/>',
	       '<text x="10" y="20" font-size="15" font-weight="bold">%s</text>' % escape(title),
	       '<text x="10" y="38" fill="#555">ratio ours/peer, log scale; '
	       'lower is better for sizes, times and memory, higher for throughput; '
	       'tick = target</text>']
	for tick in (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10):
		x = _x(tick)
		out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="%s"/>'
			   % (x, TOP - 6, x, height - 40, "#000" if tick == 1 else "#ddd"))
		out.append('<text x="%.1f" y="%d" text-anchor="middle" fill="#555">%g</text>'
			   % (x, height - 26, tick))
	x1 = _x(1.0)
	for i, r in enumerate(bars):
		y = TOP + i * ROW_H
		ratio = r["ratio"]
		color = "#999"
		if "meets_target" in r:
			color = "#2a9d4b" if r["meets_target"] else "#d1495b"
		xr = _x(ratio)
		out.append('<text x="%d" y="%d" text-anchor="end">%s</text>'
			   % (LABEL_W - 8, y + 15, escape(r["metric"])))
		out.append('<rect x="%.1f" y="%d" width="%.1f" height="%d" fill="%s"/>'
			   % (min(x1, xr), y + 4, max(abs(xr - x1), 1.5), ROW_H - 8, color))
		if r.get("target") is not None:
			xt = _x(r["target"])
			out.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#000" '
				   'stroke-width="2"/>' % (xt, y + 1, xt, y + ROW_H - 1))
		tx = max(x1, xr) + 6
		out.append('<text x="%.1f" y="%d">%.3g</text>' % (tx, y + 15, ratio))
	out.append('</svg>')
	return "\n".join(out) + "\n"
