"""The harness's outputs: a terminal table and an SVG plot (no plotting library needed)."""

from __future__ import annotations

from html import escape

# The XML namespace name that marks a document as SVG. It is an identifier that nothing
# downloads; without it browsers show the plot as plain XML.
SVG_NAMESPACE = "http://www.w3.org/2000/svg"


def _range(stat: dict, digits: int = 2) -> str:
    return f"{stat['median']:.{digits}f} ({stat['min']:.{digits}f}-{stat['max']:.{digits}f})"


def render_table(results: dict) -> str:
    machine = results["machine"]
    lines = [
        f"machine: {machine['cpu']}, {machine['cores']} cores, Linux {machine['kernel']}"
        f" (AES {'yes' if machine['aes'] else 'no'}, PCLMULQDQ {'yes' if machine['pclmulqdq'] else 'no'})",
        f"{results['bytes'] / (1 << 20):.0f} MiB per direction and run, pattern {results['pattern']}, "
        f"median of {results['runs']} runs (min-max); MB = 10^6 bytes; CPU from /proc over the transfer",
        "chain: load -> source proxy -> TLS WebSocket relay -> destination proxy -> sink"
        " (plain-tcp: splice forwarders in place of both proxies and the relay)",
        "",
    ]
    header = ("proxy", "dir", "conns", "MB/s", "CPU-ms/MB send", "CPU-ms/MB recv", "relay", "load+sink",
              "peak RSS src/dst", "rtt p50/p99 ms", "setup ms", "suite (src/dst)", "note")
    rows = []
    for row in results["rows"]:
        if not row["runs"]:
            rows.append((row["proxy"], row["direction"], str(row["connections"]), "FAILED", *[""] * 8,
                         f"every run failed: {row['failures'][0]}"[:160]))
            continue
        cpu = row["cpu_ms_per_mb"]
        sender, receiver = row.get("sender", "source"), row.get("receiver", "destination")
        suites = row.get("suites") or {}
        notes = []
        if row.get("emulated"):
            notes.append("emulated")
        if row.get("failures"):
            notes.append(f"{len(row['failures'])} failed run(s): {row['failures'][0][:80]}")
        if row.get("disturbed_runs"):
            notes.append(f"{row['disturbed_runs']} disturbed")
        if "vs_baseline" in row:
            b = row["vs_baseline"]
            notes.append(f"x{b['mb_per_s']:.2f} MB/s, CPU x{b['sender_cpu']:.2f}/x{b['receiver_cpu']:.2f} of baseline")
        if "sender_vs_ceiling" in row:
            notes.append(f"{row['sender_vs_ceiling']:.1f}x/{row['receiver_vs_ceiling']:.1f}x cipher")
        if "vs_plain_tcp" in row:
            notes.append(f"{row['vs_plain_tcp'] * 100:.0f}% of plain")
        rows.append((
            row["proxy"], row["direction"], str(row["connections"]), _range(row["mb_per_s"], 0),
            f"{cpu[sender]['median']:.2f} ({sender[:3]})", f"{cpu[receiver]['median']:.2f} ({receiver[:3]})",
            f"{cpu['relay']['median']:.2f}", f"{cpu['load']['median'] + cpu['sink']['median']:.2f}",
            f"{row['peak_rss_kib']['source'] / 1024:.1f}/{row['peak_rss_kib']['destination'] / 1024:.1f} MB",
            f"{row['latency_ms']['p50']:.2f}/{row['latency_ms']['p99']:.2f}",
            f"{row['setup_ms']:.1f}" if row.get("setup_ms") is not None else "-",
            "/".join(suites.get(r, "-") for r in ("source", "destination")) if suites else "none",
            "; ".join(notes),
        ))
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip())
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    for name, aead in results.get("aead", {}).items():
        suites = ", ".join(f"{suite} {v['encrypt_ms_per_mb']:.2f}/{v['decrypt_ms_per_mb']:.2f}"
                           for suite, v in aead["suites"].items() if v)
        lines.append(f"cipher ceiling {name} (mbedTLS {aead['mbedtls_version']}, "
                     f"{aead['record_bytes']}-byte records, CPU-ms/MB encrypt/decrypt): {suites}")
    return "\n".join(lines) + "\n"


def render_svg(results: dict) -> str:
    """Two bar charts side by side: chain MB/s, and CPU-ms/MB of the sending and receiving
    proxies, one group of bars per configuration and one colour per proxy."""
    rows = [row for row in results["rows"] if row["runs"]]
    proxies = list(dict.fromkeys(r["proxy"] for r in rows))
    configs = list(dict.fromkeys((r["direction"], r["connections"]) for r in rows))
    colours = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1"]
    by = {(r["proxy"], r["direction"], r["connections"]): r for r in rows}
    bar, gap, left, top, height = 14, 18, 60, 40, 220
    group = bar * len(proxies) + gap
    chart_width = group * len(configs) + 20
    cpu_group = bar * 2 * len(proxies) + gap
    cpu_width = cpu_group * len(configs) + 20
    width = left + chart_width + 80 + cpu_width + 20
    out = [f'<svg xmlns="{SVG_NAMESPACE}" width="{width}" height="{top + height + 110}" '
           'font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{top + height + 110}" fill="white"/>']

    def axis(x0: float, chart: float, title: str, peak: float) -> None:
        out.append(f'<text x="{x0}" y="{top - 18}" font-size="13">{escape(title)}</text>')
        out.append(f'<line x1="{x0}" y1="{top + height}" x2="{x0 + chart}" y2="{top + height}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + height}" stroke="black"/>')
        for i in range(5):
            value = peak * i / 4
            y = top + height - height * i / 4
            out.append(f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{value:.0f}</text>'
                       if peak >= 8 else f'<text x="{x0 - 6}" y="{y + 4}" text-anchor="end">{value:.1f}</text>')
            out.append(f'<line x1="{x0}" y1="{y}" x2="{x0 + chart}" y2="{y}" stroke="#ddd"/>')

    peak = max(r["mb_per_s"]["median"] for r in rows) * 1.1 or 1
    axis(left, chart_width, "chain MB/s (median)", peak)
    for c, (direction, connections) in enumerate(configs):
        x = left + 10 + c * group
        for p, proxy in enumerate(proxies):
            row = by.get((proxy, direction, connections))
            if row:
                h = height * row["mb_per_s"]["median"] / peak
                out.append(f'<rect x="{x + p * bar}" y="{top + height - h:.1f}" width="{bar - 2}" '
                           f'height="{h:.1f}" fill="{colours[p % len(colours)]}"/>')
        out.append(f'<text x="{x + bar * len(proxies) / 2}" y="{top + height + 14}" '
                   f'text-anchor="middle">{direction} x{connections}</text>')
    x_cpu = left + chart_width + 80
    proxy_rows = [r for r in rows if r["proxy"] != "plain-tcp"] or rows
    cpu_peak = max(max(r["cpu_ms_per_mb"][r.get("sender", "source")]["median"],
                       r["cpu_ms_per_mb"][r.get("receiver", "destination")]["median"]) for r in proxy_rows) * 1.1 or 1
    axis(x_cpu, cpu_width, "CPU-ms per MB: sending (solid) / receiving (light) proxy", cpu_peak)
    for c, (direction, connections) in enumerate(configs):
        x = x_cpu + 10 + c * cpu_group
        for p, proxy in enumerate(proxies):
            row = by.get((proxy, direction, connections))
            if not row:
                continue
            for k, (role, opacity) in enumerate(((row.get("sender", "source"), 1.0),
                                                  (row.get("receiver", "destination"), 0.45))):
                value = row["cpu_ms_per_mb"][role]["median"]
                h = height * min(value / cpu_peak, 1)
                out.append(f'<rect x="{x + (2 * p + k) * bar}" y="{top + height - h:.1f}" width="{bar - 2}" '
                           f'height="{h:.1f}" fill="{colours[p % len(colours)]}" fill-opacity="{opacity}"/>')
        out.append(f'<text x="{x + bar * len(proxies)}" y="{top + height + 14}" '
                   f'text-anchor="middle">{direction} x{connections}</text>')
    for p, proxy in enumerate(proxies):
        y = top + height + 40 + 16 * p
        label = proxy + (" (emulated)" if proxy in results.get("emulated", []) else "")
        out.append(f'<rect x="{left}" y="{y - 10}" width="12" height="12" fill="{colours[p % len(colours)]}"/>')
        out.append(f'<text x="{left + 18}" y="{y}">{escape(label)}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
