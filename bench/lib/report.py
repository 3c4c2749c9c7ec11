#!/usr/bin/env python3
"""Turn bench/compare.sh's raw measurements into results.md and PNG charts.

    report.py RESULTS_DIR

Reads RESULTS_DIR/raw/{runs,status,scenarios}.jsonl, raw/meta.txt and
machine.txt; writes RESULTS_DIR/results.md and one RESULTS_DIR/<scenario>.png
per scenario (if matplotlib is available). Standard library otherwise.
"""

import json
import os
import statistics
import sys

# cairn-old (compare.sh --cairn-old) and cairn-log (--with-log) are variants of
# cairn, kept next to it so the tables and charts read as a before/after.
PROXIES = ["cairn", "cairn-old", "cairn-log", "nginx", "httpd"]
SATURATED = 0.9  # below this share of the server cores' time, a run was client-bound
FOREIGN = 15.0   # server cores busier than the proxy's own CPU by this many points: other load
COLORS = {"cairn": "#2b7a4b", "cairn-old": "#93c5a4", "cairn-log": "#6b8e23",
          "nginx": "#1f5fa8", "httpd": "#b8502a"}
# Extra ratio columns, in requests per server CPU-second: (row, divided by), shown
# only when both slots ran.
VARIANT_RATIOS = [("cairn", "cairn-old"), ("cairn-log", "cairn")]


def expand_cpus(spec):
    out = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out.extend(range(int(lo), int(hi or lo) + 1))
    return out


def read_jsonl(path):
    out = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    out.append(json.loads(line))
    return out


def read_kv(path):
    out = {}
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    out[key] = value
    return out


def fmt_us(us):
    if us is None:
        return "—"
    if us < 1000:
        return f"{us:.0f} µs"
    if us < 1_000_000:
        return f"{us / 1000:.2f} ms"
    return f"{us / 1e6:.2f} s"


def fmt_num(x, digits=0):
    if x is None:
        return "—"
    return f"{x:,.{digits}f}"


def fmt_ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return f"{a / b:.2f}×"


def derive(run):
    """Per-run metrics, or None when wrk produced no summary."""
    w = run.get("wrk")
    if not w or not w.get("duration_us"):
        return None
    secs = w["duration_us"] / 1e6
    cpu = run["cpu_ticks"] / run["clk_tck"]
    errors = {
        k[4:]: w[k]
        for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")
        if w.get(k)
    }
    return {
        "rep": run["rep"],
        "rps": w["requests"] / secs,
        "p50": w["lat_p50_us"],
        "p99": w["lat_p99_us"],
        "mbps": w["bytes"] / secs / 1e6,
        "cpu": cpu,
        "secs": secs,
        "req_per_cpu": w["requests"] / cpu if cpu > 0 else None,
        "mb_per_cpu": w["bytes"] / 1e6 / cpu if cpu > 0 else None,
        "pss_mib": run["pss_kb"] / 1024,
        "rss_mib": run["rss_kb"] / 1024 if "rss_kb" in run else None,
        "origin_delta": run["origin_delta"],
        "idle_open": run.get("idle_open", -1),
        "idle_alive": run.get("idle_alive", -1),
        "errors": errors,
        "requests": w["requests"],
        "srv_busy": run.get("server_cores_busy_pm", -1) / 10,
        "cli_busy": run.get("client_cores_busy_pm", -1) / 10,
        "steal": (run.get("server_cores_steal_pm", 0) + run.get("client_cores_steal_pm", 0)) / 10,
        "wrk_cpu": run["client_cpu_ticks"] / run["clk_tck"] if "client_cpu_ticks" in run else None,
        "log_lines": run.get("log_lines", -1),
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def foreign_load(run, n_server_cores, n_client_cores):
    """Percentage points of core time used by something other than the proxy (on
    the server cores) or wrk (on the client cores); the larger of the two."""
    if run["srv_busy"] < 0 or not run["secs"]:
        return 0.0
    server = run["srv_busy"] - 100.0 * run["cpu"] / (run["secs"] * n_server_cores)
    client = 0.0
    if run["wrk_cpu"] is not None and run["cli_busy"] >= 0:
        client = run["cli_busy"] - 100.0 * run["wrk_cpu"] / (run["secs"] * n_client_cores)
    return max(server, client)


def summarize(runs):
    keys = ["rps", "p50", "p99", "mbps", "cpu", "secs", "req_per_cpu", "mb_per_cpu", "pss_mib", "rss_mib",
            "srv_busy", "cli_busy"]
    s = {k: median([r[k] for r in runs]) for k in keys}
    s["rps_min"] = min(r["rps"] for r in runs)
    s["rps_max"] = max(r["rps"] for r in runs)
    s["origin_delta"] = sum(r["origin_delta"] for r in runs)
    errors = {}
    for r in runs:
        for k, v in r["errors"].items():
            errors[k] = errors.get(k, 0) + v
    s["errors"] = errors
    s["n"] = len(runs)
    s["runs"] = runs
    s["idle_open"] = min(r["idle_open"] for r in runs)
    s["idle_alive"] = min(r["idle_alive"] for r in runs)
    s["log_lines"] = sum(r["log_lines"] for r in runs) if all(r["log_lines"] >= 0 for r in runs) else -1
    s["requests"] = sum(r["requests"] for r in runs)
    return s


def chart(path, scenario, order, summaries, states):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9 if len(order) <= 3 else 12, 3.6))
    panels = [
        ("requests/s (median, min–max)", "rps"),
        ("requests per server CPU-second", "req_per_cpu"),
    ]
    for ax, (label, key) in zip(axes, panels):
        xs = list(range(len(order)))
        for x, p in zip(xs, order):
            s = summaries.get(p)
            if s is None or s.get(key) is None:
                ax.bar(x, 0, color=COLORS[p])
                ax.text(x, 0, states.get(p, "not measured").replace(" (", "\n("),
                        ha="center", va="bottom", fontsize=8, color="#555555")
                continue
            v = s[key]
            if key == "rps":
                err = [[v - s["rps_min"]], [s["rps_max"] - v]]
                ax.bar(x, v, color=COLORS[p], yerr=err, capsize=4)
            else:
                ax.bar(x, v, color=COLORS[p])
            ax.text(x, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(xs)
        ax.set_xticklabels(order)
        ax.set_title(label, fontsize=10)
        ax.margins(y=0.15)
        ax.ticklabel_format(axis="y", style="plain")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{scenario['id']}: {scenario['title']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    out = sys.argv[1]
    raw = os.path.join(out, "raw")
    meta = read_kv(os.path.join(raw, "meta.txt"))
    scenarios = read_jsonl(os.path.join(raw, "scenarios.jsonl"))
    runs = read_jsonl(os.path.join(raw, "runs.jsonl"))
    status = read_jsonl(os.path.join(raw, "status.jsonl"))
    machine = ""
    if os.path.exists(os.path.join(out, "machine.txt")):
        with open(os.path.join(out, "machine.txt"), encoding="utf-8") as f:
            machine = f.read()

    order = [p for p in PROXIES if p in meta.get("proxies", ",".join(PROXIES)).split(",")]
    n_server_cores = len(expand_cpus(meta.get("server_cores", "0")))
    n_client_cores = len(expand_cpus(meta.get("client_cores", "0")))
    variant_ratios = [(a, b) for a, b in VARIANT_RATIOS if a in order and b in order]

    try:
        import matplotlib  # noqa: F401
        have_mpl = True
    except ImportError:
        have_mpl = False

    md = []
    md.append(f"# cairn vs nginx vs Apache httpd: cache hits ({meta.get('mode', '?')} run)")
    md.append("")
    md.append(f"Command: `{meta.get('command', 'bench/compare.sh')}`")
    md.append("")
    md.append(
        f"Server cores `{meta.get('server_cores')}` "
        f"(cairn shards = nginx workers = httpd children = {meta.get('shards')}; "
        f"httpd {meta.get('httpd_threads')} threads per child); "
        f"load generator (wrk) on cores `{meta.get('client_cores')}`. "
        f"{meta.get('repeats')} measured run(s) of {meta.get('duration')} s per proxy and "
        f"scenario, interleaved ({' '.join(order)} {' '.join(order)} …), after a "
        f"{meta.get('warmup')} s unmeasured warm-up. Medians; the spread is min–max of "
        "requests/s over the runs."
    )
    md.append("")
    md.append(
        "Every measured request is a cache hit: before a proxy is measured, a burst of "
        f"{meta.get('verify_n')} requests through it must leave the origin's access log "
        "unchanged (nginx's `X-Cache-Status` and httpd's `X-Cache` are checked as well), "
        "and every measured run is checked the same way (\"origin req.\" below). A proxy "
        "that fails the check is reported as **not cached (refused)** and not measured."
    )
    md.append("")
    md.append(
        "Columns: req/s and MB/s (10^6 bytes, headers included) as seen by wrk; p50/p99 "
        "latency from wrk; server CPU = utime+stime of all the server's processes and "
        "threads (from /proc/PID/stat) over the run, with the share of the server cores' "
        "time it represents; req and MB per CPU-second divide by "
        "it; memory = sum of PSS (and of RSS) over the server's processes at the end of the "
        "run (cache files in the page cache are not included); ratios are this row's req/s and "
        "req per CPU-s divided by nginx's and httpd's."
    )
    md.append("")
    variants = []
    if "cairn-old" in order:
        variants.append(
            f"**cairn-old** is an older cairn binary (`{meta.get('cairn_old_bin', '?')}`) run with "
            "exactly cairn's configuration, on its own port and cache"
        )
    if "cairn-log" in order:
        variants.append(
            "**cairn-log** is cairn's binary and configuration with the access log on "
            "(`<Log><Access>ON</Access></Log>`; its logger thread's CPU is in the server CPU, "
            "the kernel's writeback of the file is not)"
        )
    if variants:
        md.append(
            "; ".join(variants) + ". "
            + " ".join(f"`{a}÷{b}` is {a}'s req per CPU-s divided by {b}'s." for a, b in variant_ratios)
        )
        md.append("")
    md.append("Machine:")
    md.append("")
    md.append("```")
    md.append(machine.rstrip())
    md.append("```")
    md.append("")

    all_runs_rows = []
    for sc in scenarios:
        sid = sc["id"]
        md.append(f"## {sid}: {sc['title']}")
        md.append("")
        md.append(f"`{sc['wrk']}`")
        md.append("")
        states = {}
        notes = {}
        for st in status:
            if st["scenario"] == sid:
                states[st["proxy"]] = st["state"]
                notes[st["proxy"]] = st["note"]
        summaries = {}
        for p in order:
            rs = [derive(r) for r in runs if r["scenario"] == sid and r["proxy"] == p]
            rs = [r for r in rs if r is not None]
            for r in rs:
                all_runs_rows.append((sid, p, r))
            if rs:
                summaries[p] = summarize(rs)
        label = {
            "refused": "not cached (refused)",
            "failed": "did not start",
            "no-log": "no access log",
        }
        ref = {q: summaries.get(q) for q in ("nginx", "httpd")}
        md.append(
            "| proxy | req/s | spread (min–max) | p50 | p99 | MB/s | server CPU s | "
            "req per CPU-s | MB per CPU-s | memory PSS (RSS) | errors | origin req. | "
            "÷ nginx (req/s, per CPU) | ÷ httpd (req/s, per CPU) |"
            + "".join(f" {a}÷{b} (per CPU) |" for a, b in variant_ratios)
        )
        md.append("|" + "---|" * (14 + len(variant_ratios)))
        chart_states = {}
        unsaturated = []
        contended = []
        for p in order:
            s = summaries.get(p)
            if s is None:
                text = label.get(states.get(p), "not measured")
                chart_states[p] = text
                md.append(f"| {p} | **{text}** |" + " — |" * (12 + len(variant_ratios)))
                continue
            errs = ", ".join(f"{k} {v}" for k, v in sorted(s["errors"].items())) or "0"
            util = s["cpu"] / (s["secs"] * n_server_cores) if s["secs"] else 0
            mark = ""
            foreign = max(foreign_load(r, n_server_cores, n_client_cores) for r in s["runs"])
            if foreign > FOREIGN:
                mark += " ‡"
                contended.append(f"{p} (up to {foreign:.0f} points)")
            elif util < SATURATED:
                mark = " †"
                unsaturated.append(f"{p} (client cores {s['cli_busy']:.0f}% busy)")
            rss = f" ({fmt_num(s['rss_mib'], 1)})" if s["rss_mib"] is not None else ""
            ratios = []
            for q in ("nginx", "httpd"):
                r = ref[q]
                if q == p or r is None:
                    ratios.append("—")
                else:
                    ratios.append(
                        f"{fmt_ratio(s['rps'], r['rps'])}, {fmt_ratio(s['req_per_cpu'], r['req_per_cpu'])}"
                    )
            extra = ""
            for a, b in variant_ratios:
                r = summaries.get(b)
                extra += f" {fmt_ratio(s['req_per_cpu'], r['req_per_cpu']) if p == a and r else '—'} |"
            md.append(
                f"| {p} | {fmt_num(s['rps'])} | {fmt_num(s['rps_min'])}–{fmt_num(s['rps_max'])} | "
                f"{fmt_us(s['p50'])} | {fmt_us(s['p99'])} | {fmt_num(s['mbps'], 1)} | "
                f"{fmt_num(s['cpu'], 2)} ({util:.0%}){mark} | {fmt_num(s['req_per_cpu'])} | {fmt_num(s['mb_per_cpu'], 1)} | "
                f"{fmt_num(s['pss_mib'], 1)} MiB{rss} | {errs} | {s['origin_delta']} | {ratios[0]} | {ratios[1]} |"
                + extra
            )
        md.append("")
        if contended:
            md.append(
                f"‡ {', '.join(contended)}: the server (client) cores were busier than the proxy's "
                "(wrk's) own CPU accounts for, so something outside the benchmark was running on "
                "them. These numbers are not trustworthy; run again on a quiet machine."
            )
            md.append("")
        if unsaturated:
            md.append(
                f"† {', '.join(unsaturated)}: the proxy used less than {SATURATED:.0%} of the "
                "server cores' time, so something else set the pace, normally the load generator "
                "(its cores near 100% busy); compare req per CPU-s rather than req/s for these rows."
            )
            md.append("")
        for p in order:
            if p in notes:
                md.append(f"- {p}: hit check: {notes[p]}.")
        if sc["kind"] == "idle":
            for p in order:
                s = summaries.get(p)
                if s is not None:
                    md.append(
                        f"- {p}: idle connections opened {s['idle_open']}, still open after the run "
                        f"{s['idle_alive']} (lowest over the runs)."
                    )
        s = summaries.get("cairn-log")
        if s is not None and s["log_lines"] >= 0:
            md.append(
                f"- cairn-log: its access log got {s['log_lines']:,} lines for the {s['requests']:,} "
                "requests wrk completed in the measured runs"
                + (" (**lines were dropped**)." if s["log_lines"] < s["requests"] else ".")
            )
        for p in order:
            s = summaries.get(p)
            if s is not None and s["origin_delta"]:
                md.append(
                    f"- **{p}: {s['origin_delta']} requests reached the origin during measured runs; "
                    "not every measured request was a hit.**"
                )
        md.append("")
        if have_mpl:
            png = f"{sid}.png"
            chart(os.path.join(out, png), sc, order, summaries, chart_states)
            md.append(f"![{sid}]({png})")
            md.append("")

    md.append("## All runs")
    md.append("")
    md.append(
        "| scenario | proxy | run | req/s | p99 | server CPU s | server cores busy | "
        "wrk CPU s | client cores busy | steal | origin req. | errors |"
    )
    md.append("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for sid, p, r in all_runs_rows:
        errs = ", ".join(f"{k} {v}" for k, v in sorted(r["errors"].items())) or "0"
        md.append(
            f"| {sid} | {p} | {r['rep']} | {fmt_num(r['rps'])} | {fmt_us(r['p99'])} | "
            f"{fmt_num(r['cpu'], 2)} | {r['srv_busy']:.0f}% | {fmt_num(r['wrk_cpu'], 2)} | "
            f"{r['cli_busy']:.0f}% | {r['steal']:.1f}% | "
            f"{r['origin_delta']} | {errs} |"
        )
    md.append("")
    md.append(
        "Cores busy: the share of the server (client) cores' time spent outside idle during the "
        "run, from /proc/stat, whoever used it; wrk CPU: utime+stime of wrk itself. Cores "
        "busy well above the proxy's (wrk's) own CPU share, or steal above a few percent, "
        "means something else was running (marked ‡)."
    )
    md.append("")
    md.append(
        "Raw wrk output for every run, the verification headers and the servers' logs are "
        "in `raw/` (not committed); the rendered configurations are in `conf/`."
    )
    md.append("")

    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md))


if __name__ == "__main__":
    main()
