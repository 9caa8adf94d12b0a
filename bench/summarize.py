#!/usr/bin/env python3
"""bench/run's report: every measured run (the CSV the scripts append to) into one table
of condo against what a host would otherwise run, each line with its target, written as
Markdown, CSV and an SVG bar chart.

    summarize.py RUNS.csv OUT-PREFIX HEADER-FILE

RUNS.csv rows: suite,server,workload,run,rps,p50_ms,p99_ms,cpu_cores,rss_mib,errors
"""
import csv
import sys
from collections import defaultdict

MB_PER_MIB = 1.048576


def load(path):
    runs = defaultdict(list)
    with open(path, newline="") as f:
        for row in csv.reader(f):
            if len(row) != 10:
                continue
            suite, server, workload, run, *values = row
            runs[(suite, server, workload)].append(
                dict(zip(["rps", "p50", "p99", "cpu", "rss", "errors"], [num(v) for v in values]))
            )
    return runs


def num(text):
    try:
        return float(text)
    except ValueError:
        return None


def best(runs, key, field="rps"):
    """The run with the most requests/s among those without errors (else any); for a
    latency or memory line, the one with the lowest value of that field."""
    rows = runs.get(key, [])
    clean = [r for r in rows if not r["errors"]] or rows
    if not clean:
        return None
    if field != "rps" and any(r[field] is not None for r in clean):
        return min(clean, key=lambda r: r[field] if r[field] is not None else 1e18)
    if any(r["rps"] for r in clean):
        return max(clean, key=lambda r: r["rps"] or 0)
    if any(r["p99"] is not None for r in clean):
        return min(clean, key=lambda r: r["p99"] if r["p99"] is not None else 1e18)
    return clean[0]


# What each line compares and its target. kind "ratio": condo's req/s over the other's,
# at least `target`; "max": condo's value (of `field`) at most `target`.
def lines():
    out = []
    for size in ("small.txt", "big.bin"):
        out.append(("static", f"{size} keep-alive", "condo-pass", "nginx", "ratio", 1.0, "rps"))
        out.append(("static", f"{size} keep-alive", "condo-proxy", "nginx", "ratio", 1.0, "rps"))
        out.append(("static", f"{size} keep-alive", "condo-pass", "itk", "ratio", None, "rps"))
        out.append(("static", f"{size} close", "condo-pass", "nginx", "ratio", 0.8, "rps"))
        out.append(("static", f"{size} close", "condo-proxy", "nginx", "ratio", 0.8, "rps"))
        out.append(("static", f"{size} close", "condo-pass", "itk", "ratio", 20.0, "rps"))
    out.append(("static", "small.txt alternate", "condo-pass", "nginx", "ratio", None, "rps"))
    out.append(("static", "small.txt alternate", "condo-pass", "itk", "ratio", None, "rps"))
    out.append(("static", "small.txt alternate", "condo-pass",
                ("condo-pass", "small.txt keep-alive"), "ratio", 0.9, "rps"))
    out.append(("static", "small.txt alternate", "condo-proxy",
                ("condo-proxy", "small.txt keep-alive"), "ratio", 0.9, "rps"))
    for mode in ("keep-alive", "close"):
        out.append(("php", f"hello.php {mode}", "condo-pass", "nginx", "ratio", 1.0, "rps"))
        out.append(("php", f"hello.php {mode}", "condo-proxy", "nginx", "ratio", 1.0, "rps"))
        out.append(("php", f"hello.php {mode}", "condo-pass", "itk", "ratio", None, "rps"))
    for site in ("a.test", "b.hosting.test"):
        for w in ("https/1.1 keep-alive", "new handshake", "h2"):
            out.append(("tls", f"{site} {w}", "condo", "nginx", "ratio", 0.9, "rps"))
            out.append(("tls", f"{site} {w}", "condo", "nginx-proxy", "ratio", None, "rps"))
    out.append(("scale", "cold start static", "condo", None, "max", 5.0, "p50"))
    out.append(("scale", "cold start static", "condo", None, "max", 20.0, "p99"))
    out.append(("scale", "cold start PHP", "condo", "nginx+php-fpm", "max", None, "p99"))
    out.append(("scale", "1000 idle tenants", "condo", "nginx+php-fpm", "max", 30.0, "rss"))
    out.append(("idle", "10000 idle connections", "condo", "nginx", "max", 100.0, "rss"))
    out.append(("idle", "others with 10000 idle", "condo", "nginx", "max", None, "p99"))
    out.append(("idle", "others with 10000 idle", "condo",
                ("condo", "others alone"), "max", None, "p99"))
    return out


LABELS = {
    "condo-pass": "condo pass",
    "condo-proxy": "condo proxy",
    "nginx": "nginx",
    "itk": "mpm-itk",
    "nginx-proxy": "nginx -> backend",
    "nginx+php-fpm": "nginx + PHP-FPM",
}
SUITE_BASELINE = {"php": {"nginx": "nginx + PHP-FPM", "itk": "mpm-itk + mod_php"}}


def label(suite, server):
    return SUITE_BASELINE.get(suite, {}).get(server) or LABELS.get(server, server)


def fmt(v, digits=1):
    return "–" if v is None else f"{v:,.{digits}f}".replace(",", " ")


def main():
    runs = load(sys.argv[1])
    prefix = sys.argv[2]
    header = open(sys.argv[3]).read().strip() if len(sys.argv) > 3 else ""
    table = []
    for suite, workload, server, other, kind, target, field in lines():
        mine = best(runs, (suite, server, workload), field)
        if isinstance(other, tuple):
            other_server, other_workload = other
            other_name = f"{label(suite, other_server)}, {other_workload}"
        else:
            other_server, other_workload = other, workload
            other_name = label(suite, other) if other else ""
        theirs = best(runs, (suite, other_server, other_workload), field) if other_server else None
        value = ratio = None
        met = None
        if kind == "ratio":
            if mine and theirs and mine["rps"] and theirs["rps"]:
                ratio = mine["rps"] / theirs["rps"]
                met = None if target is None else ratio >= target
        else:
            value = mine[field] if mine else None
            if field == "rss" and value is not None:
                value *= MB_PER_MIB   # targets are in MB
            if value is not None and target is not None:
                met = value <= target
            if theirs and value is not None:
                other_value = theirs[field]
                if field == "rss" and other_value is not None:
                    other_value *= MB_PER_MIB
                if other_value:
                    ratio = value / other_value
        table.append(dict(
            suite=suite, workload=workload, condo=label(suite, server), other=other_name,
            kind=kind, field=field, target=target, ratio=ratio, value=value, met=met,
            mine=mine, theirs=theirs,
        ))
    write_markdown(table, prefix + ".md", header)
    write_csv(table, prefix + ".csv")
    write_svg(table, prefix + ".svg")
    print(open(prefix + ".md").read())


def cells(run):
    if not run:
        return ["–"] * 5
    return [fmt(run["rps"], 0) if run["rps"] else "–", fmt(run["p50"], 2), fmt(run["p99"], 2),
            fmt(run["cpu"], 2), fmt(run["rss"], 1)]


def target_text(r):
    if r["target"] is None:
        return ""
    if r["kind"] == "ratio":
        return f"≥ {r['target']:g}×"
    unit = {"rss": " MB", "p50": " ms p50", "p99": " ms p99"}[r["field"]]
    return f"≤ {r['target']:g}{unit}"


def result_text(r):
    if r["kind"] == "ratio":
        return "–" if r["ratio"] is None else f"{r['ratio']:.2f}×"
    unit = {"rss": " MB", "p50": " ms", "p99": " ms"}[r["field"]]
    text = "–" if r["value"] is None else f"{r['value']:.2f}{unit}"
    if r["ratio"] is not None:
        text += f" ({r['ratio']:.2f}× theirs)"
    return text


def write_markdown(table, path, header):
    with open(path, "w") as f:
        f.write("# condo side by side: the whole suite (bench/run)\n\n")
        if header:
            f.write(header + "\n\n")
        f.write("| suite | workload | condo | req/s | p50 ms | p99 ms | CPU | RSS MiB "
                "| against | req/s | p50 ms | p99 ms | CPU | RSS MiB | result | target | met |\n")
        f.write("|---|---|---|--:|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|---|---|\n")
        for r in table:
            met = {True: "yes", False: "**no**", None: ""}[r["met"]]
            f.write("| " + " | ".join(
                [r["suite"], r["workload"], r["condo"], *cells(r["mine"]),
                 r["other"] or "–", *(cells(r["theirs"]) if r["other"] else ["", "", "", "", ""]),
                 result_text(r), target_text(r), met]) + " |\n")
        f.write(
            "\nreq/s, p50 and p99 are of the best of the runs (most req/s without errors; for"
            " latency and memory lines the lowest value). CPU = cores the servers used during the run"
            " (the machine's busy time minus the load generator's, over the wall time: client"
            " and servers share the cores). RSS = the servers' processes at the end of the"
            " run; for the idle lines, memory they added. Memory targets are in MB (10^6"
            " bytes); the table's RSS columns are MiB.\n")
        missed = [r for r in table if r["met"] is False]
        if missed:
            f.write("\nTargets missed: " + "; ".join(
                f"{r['suite']} {r['workload']} ({r['condo']}): {result_text(r)}, target "
                f"{target_text(r)}" for r in missed) + ".\n")


def write_csv(table, path):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["suite", "workload", "condo", "condo_rps", "condo_p50_ms", "condo_p99_ms",
                    "condo_cpu", "condo_rss_mib", "against", "their_rps", "their_p50_ms",
                    "their_p99_ms", "their_cpu", "their_rss_mib", "ratio", "value", "target",
                    "met"])
        for r in table:
            m, t = r["mine"] or {}, r["theirs"] or {}
            w.writerow([r["suite"], r["workload"], r["condo"],
                        *[m.get(k) for k in ("rps", "p50", "p99", "cpu", "rss")], r["other"],
                        *[t.get(k) for k in ("rps", "p50", "p99", "cpu", "rss")],
                        None if r["ratio"] is None else round(r["ratio"], 3),
                        None if r["value"] is None else round(r["value"], 3),
                        target_text(r), {True: "yes", False: "no", None: ""}[r["met"]]])


def write_svg(table, path):
    """One bar per line with a target: how far condo is from it (1.0 = exactly met)."""
    rows = []
    for r in table:
        if r["target"] is None:
            continue
        if r["kind"] == "ratio":
            score = None if r["ratio"] is None else r["ratio"] / r["target"]
        else:
            score = None if not r["value"] else r["target"] / r["value"]
        rows.append((f"{r['suite']}: {r['workload']} ({r['condo']}"
                     + (f" vs {r['other']}" if r["kind"] == "ratio" else "") + ")", score, r))
    bar_h, gap, left, width = 18, 6, 470, 420
    height = 60 + len(rows) * (bar_h + gap)
    scale = width / 2.0   # the axis runs 0 .. 2x the target
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{left + width + 120}" '
           f'height="{height}" font-family="sans-serif" font-size="12">',
           '<rect width="100%" height="100%" fill="white"/>',
           f'<text x="10" y="20" font-size="14" font-weight="bold">condo against its targets '
           f'(1.0 = target met exactly; longer is better; axis clipped at 2.0)</text>']
    for i, (name, score, r) in enumerate(rows):
        y = 40 + i * (bar_h + gap)
        out.append(f'<text x="{left - 8}" y="{y + 13}" text-anchor="end">{escape(name)}</text>')
        if score is None:
            out.append(f'<text x="{left + 4}" y="{y + 13}" fill="gray">not measured</text>')
            continue
        w = min(score, 2.0) * scale
        color = "#2e7d32" if score >= 1.0 else "#c62828"
        out.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{color}"/>')
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + 13}">{escape(result_text(r))}</text>')
    x1 = left + scale
    out.append(f'<line x1="{x1}" y1="30" x2="{x1}" y2="{height - 10}" stroke="black" '
               f'stroke-dasharray="4 3"/>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


if __name__ == "__main__":
    main()
