"""The sweep's reduce step: every unit's lines in one table, and a plot.

Run with two arguments, INPUT and OUTPUT: INPUT holds one folder per unit
(0/, 1/, ...) with that unit's stdout, as the reduce unit sees them under
/input and as `cobble results --out DIR` leaves them in DIR. Writes
OUTPUT/sweep.csv and OUTPUT/sweep.svg, and prints a summary.
"""

import os
import sys

WIDTH, HEIGHT, MARGIN = 640, 400, 60


def read_rows(folder):
    units = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
    rows = []
    for unit in units:
        with open(os.path.join(folder, str(unit), "stdout")) as lines:
            for line in lines:
                beta, peak, day, ever = line.strip().split(",")
                rows.append((float(beta), int(peak), int(day), int(ever)))
    return rows


def polyline(rows, column, top, colour):
    """The points of one column against beta, scaled to the plot area."""
    low, high = rows[0][0], rows[-1][0]
    span = (high - low) or 1.0
    points = []
    for row in rows:
        x = MARGIN + (row[0] - low) / span * (WIDTH - 2 * MARGIN)
        y = HEIGHT - MARGIN - row[column] / top * (HEIGHT - 2 * MARGIN)
        points.append(f"{x:.1f},{y:.1f}")
    return f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{" ".join(points)}"/>'


def svg(rows):
    top = max(row[3] for row in rows) or 1
    low, high = rows[0][0], rows[-1][0]
    bottom = HEIGHT - MARGIN
    return "\n".join([
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        f'<text x="{WIDTH / 2:.0f}" y="24" text-anchor="middle" font-size="16">SIR sweep: infections against the infection rate</text>',
        f'<line x1="{MARGIN}" y1="{bottom}" x2="{WIDTH - MARGIN}" y2="{bottom}" stroke="black"/>',
        f'<line x1="{MARGIN}" y1="{MARGIN}" x2="{MARGIN}" y2="{bottom}" stroke="black"/>',
        f'<text x="{MARGIN}" y="{bottom + 20}" text-anchor="middle">{low:.2f}</text>',
        f'<text x="{WIDTH - MARGIN}" y="{bottom + 20}" text-anchor="middle">{high:.2f}</text>',
        f'<text x="{WIDTH / 2:.0f}" y="{bottom + 40}" text-anchor="middle">infection rate (beta, per day)</text>',
        f'<text x="{MARGIN - 8}" y="{MARGIN + 4}" text-anchor="end">{top}</text>',
        f'<text x="{MARGIN - 8}" y="{bottom + 4}" text-anchor="end">0</text>',
        polyline(rows, 3, top, "#1f77b4"),
        polyline(rows, 1, top, "#d62728"),
        f'<text x="{WIDTH - MARGIN}" y="{bottom - 36}" text-anchor="end" fill="#1f77b4">ever infected</text>',
        f'<text x="{WIDTH - MARGIN}" y="{bottom - 20}" text-anchor="end" fill="#d62728">infected at the peak</text>',
        "</svg>",
        "",
    ])


def main():
    folder, out = sys.argv[1], sys.argv[2]
    rows = read_rows(folder)
    if not rows:
        sys.exit(f"no unit outputs under {folder}")
    # (os.makedirs would climb to "/", which the sandbox does not show.)
    if not os.path.isdir(out):
        os.makedirs(out)
    with open(os.path.join(out, "sweep.csv"), "w") as table:
        table.write("beta,peak_infected,peak_day,ever_infected\n")
        for beta, peak, day, ever in rows:
            table.write(f"{beta:.2f},{peak},{day},{ever}\n")
    with open(os.path.join(out, "sweep.svg"), "w") as plot:
        plot.write(svg(rows))
    worst = max(rows, key=lambda row: row[1])
    print(f"{len(rows)} infection rates from {rows[0][0]:.2f} to {rows[-1][0]:.2f}")
    print(f"highest peak: {worst[1]} infected on day {worst[2]} at beta {worst[0]:.2f}")
    print("wrote sweep.csv and sweep.svg")


if __name__ == "__main__":
    main()
